"""Flow-matching schedulers of HiDream-O1-Image, number-for-number with the official ones.

Three samplers, one small interface: `.timesteps` (the T values in (0, 1000] the model is run at, in
order), `.sigmas` (one more than timesteps, last 0) and `.step(model_output, sample) -> next sample`,
where `model_output` is minus the flow velocity (what the official pipeline hands its schedulers).

- `FlowUniPC`: multistep UniPC (order 2, bh2, x0-predicting, lower order at the last step) over the
  shift-3 flow schedule: the full model's default.
- `FlashEuler`: the dev models' stochastic Euler, which re-noises after every step.
- `FlowMatchEuler`: diffusers' deterministic flow-match Euler (imported only when used: the GPU
  machine has no diffusers).

The goldens in ../shared/conformance/schedulers pin every detail; the quirks kept on purpose (the
schedule shifted twice, timesteps truncated to integers, float32 scalar arithmetic, noise drawn at the
last step too) are noted where they happen. Check: `python -m pytest tests/core/test_schedulers.py -q`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

# The dev list and the scheduler names are the presets' data (core.presets imports no torch); built here.
from core.presets import DEV_TIMESTEPS, SCHEDULERS  # noqa: F401  (re-exported for callers of this module)

NUM_TRAIN_TIMESTEPS = 1000


def _shift(sigmas, shift: float):
    """The resolution-independent time shift s*sigma / (1 + (s-1)*sigma), in the input's own precision."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _sigmas_from_timesteps(timesteps: Sequence[int]) -> torch.Tensor:
    """sigma = T/1000 in Python float64, stored as float32, with a final 0 (how the pipeline overrides a
    schedule)."""
    return torch.tensor([int(t) / 1000.0 for t in timesteps] + [0.0], dtype=torch.float32)


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def _check_shift(shift: float) -> None:
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")


class FlowUniPC:
    """UniPC multistep on the flow schedule (predict-x0, bh2), as the full model samples.

    State between steps: the last two x0 predictions, the previous (corrected) sample and the order
    used by the previous predictor; the corrector of step i refines the sample with x0_i before the
    predictor moves on. One instance serves one trajectory (a batch of images in lockstep).
    """

    def __init__(self, steps: int = 50, shift: float = 3.0, order: int = 2):
        _check_steps(steps)
        _check_shift(shift)
        if order not in (1, 2):
            raise ValueError(f"UniPC order must be 1 or 2, got {order!r}")
        self.order = order
        # Training schedule: 1 - linspace(1, 1/1000) reversed, shifted in float32. Only its ends are used.
        base = torch.from_numpy(1.0 - np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS)[::-1].copy())
        base = _shift(base.to(torch.float32), shift)
        sigma_max, sigma_min = base[0].item(), base[-1].item()
        # The inference schedule is shifted a second time (float64): the official behaviour, kept.
        sig = _shift(np.linspace(sigma_max, sigma_min, steps + 1)[:-1], shift)
        self.timesteps = torch.from_numpy(sig * NUM_TRAIN_TIMESTEPS).to(torch.int64)  # truncation, not rounding
        self.sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        self._x0: list[torch.Tensor] = []  # x0 predictions of the last `order` steps, oldest first
        self._last_sample: torch.Tensor | None = None
        self._last_order = 0
        self.step_index = 0

    def _lambda(self, k: int) -> torch.Tensor:
        # log-SNR of sigma k, as 0-d float32 tensors (scalar kernels: a vectorised log may differ in the last bit)
        sigma = self.sigmas[k]
        return torch.log(1 - sigma) - torch.log(sigma)

    @staticmethod
    def _b_coefficients(hh: torch.Tensor, order: int) -> torch.Tensor:
        """The bh2 right-hand side: b_k = g_k * k! / B(h) with g_1 = phi_1(hh)/hh - 1,
        g_{k+1} = g_k/hh - 1/(k+1)!."""
        b_h = torch.expm1(hh)
        g = torch.expm1(hh) / hh - 1
        fact, out = 1, []
        for k in range(1, order + 1):
            out.append(g * fact / b_h)
            fact *= k + 1
            g = g / hh - 1 / fact
        return torch.tensor(out)

    def _correct(self, x0_now: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """UniC: redo the previous step's update using the new x0 as an extra node."""
        i, p = self.step_index, self._last_order
        sigma_t, sigma_s = self.sigmas[i], self.sigmas[i - 1]
        alpha_t = 1 - sigma_t
        lam_s = self._lambda(i - 1)
        h = self._lambda(i) - lam_s
        hh = -h
        m_prev = self._x0[-1]
        rks, d1 = [], None
        if p == 2:
            rk = (self._lambda(i - 2) - lam_s) / h
            rks.append(rk)
            d1 = (self._x0[-2] - m_prev) / rk
        rks.append(1.0)
        rks = torch.tensor(rks)
        if p == 1:
            rhos = torch.tensor([0.5], dtype=sample.dtype)
        else:
            rmat = torch.stack([torch.pow(rks, k) for k in range(p)])
            rhos = torch.linalg.solve(rmat, self._b_coefficients(hh, p)).to(sample.dtype)
        base = sigma_t / sigma_s * self._last_sample - alpha_t * torch.expm1(hh) * m_prev
        corr = 0 if d1 is None else rhos[0] * d1
        return base - alpha_t * torch.expm1(hh) * (corr + rhos[-1] * (x0_now - m_prev))

    def _predict(self, sample: torch.Tensor, order: int) -> torch.Tensor:
        """UniP: exponential-integrator step to sigma_{i+1}; order 2 adds the finite difference of x0
        (rho = 1/2)."""
        i = self.step_index
        sigma_t, sigma_s = self.sigmas[i + 1], self.sigmas[i]
        alpha_t = 1 - sigma_t  # at the final sigma 0: lambda = +inf, expm1(-inf) = -1, so the result is x0
        lam_s = self._lambda(i)
        hh = -(self._lambda(i + 1) - lam_s)
        m0 = self._x0[-1]
        out = sigma_t / sigma_s * sample - alpha_t * torch.expm1(hh) * m0
        if order == 2:
            rk = (self._lambda(i - 1) - lam_s) / -hh
            d1 = (self._x0[-2] - m0) / rk
            out = out - alpha_t * torch.expm1(hh) * (torch.tensor(0.5, dtype=sample.dtype) * d1)
        return out

    def step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        i = self.step_index
        if i >= len(self.timesteps):
            raise RuntimeError(f"FlowUniPC: all {len(self.timesteps)} steps are done")
        x0 = sample - self.sigmas[i] * model_output
        if i > 0:
            sample = self._correct(x0, sample)
        self._x0 = (self._x0 + [x0])[-self.order :]
        # lower_order_final: the last step is first order; the first step is (warm-up)
        order = min(self.order, len(self.timesteps) - i, i + 1)
        self._last_sample = sample
        out = self._predict(sample, order)
        self._last_order = order
        self.step_index += 1
        return out.to(sample.dtype)


class FlashEuler:
    """The dev models' stochastic Euler: x0 = z - sigma*v', then re-noise to sigma_next with fresh noise.

    `s_noise` is the noise scale (a float, or one value per step for a ramp); noise is clipped at
    `noise_clip_std` times its own (unbiased) std when that is > 0. Noise comes from `generator`: one
    torch.Generator, or a list with one per batch row so that each image of a batch draws, and clips,
    exactly what a batch-1 run with its own seed would. With no generator the device's global RNG is
    used, as the official code does. `step(..., noise=...)` injects the raw draws instead (tests).
    """

    def __init__(
        self,
        timesteps: Sequence[int] = DEV_TIMESTEPS,
        s_noise: float | Sequence[float] = 7.5,
        noise_clip_std: float = 2.5,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ):
        ts = [int(t) for t in timesteps]
        if not ts or any(not 0 < t <= NUM_TRAIN_TIMESTEPS for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
            raise ValueError(f"timesteps must be strictly decreasing integers in (0, 1000], got {list(timesteps)}")
        self.timesteps = torch.tensor(ts, dtype=torch.int64)
        self.sigmas = _sigmas_from_timesteps(ts)
        self.s_noise = [float(s_noise)] * len(ts) if np.isscalar(s_noise) else [float(s) for s in s_noise]
        if len(self.s_noise) != len(ts):
            raise ValueError(f"s_noise has {len(self.s_noise)} values for {len(ts)} steps")
        if noise_clip_std < 0:
            raise ValueError(f"noise_clip_std must be >= 0, got {noise_clip_std!r}")
        self.noise_clip_std = float(noise_clip_std)
        self.generator = generator
        self.step_index = 0

    def _draw(self, like: torch.Tensor) -> torch.Tensor:
        gen = self.generator
        if gen is None:
            return torch.randn(like.shape, device=like.device, dtype=torch.float32)
        if isinstance(gen, torch.Generator):
            return torch.randn(like.shape, generator=gen, device=gen.device, dtype=torch.float32).to(like.device)
        if len(gen) != like.shape[0]:
            raise ValueError(f"FlashEuler has {len(gen)} generators for a batch of {like.shape[0]}")
        return torch.cat(
            [
                torch.randn((1, *like.shape[1:]), generator=g, device=g.device, dtype=torch.float32).to(
                    like.device
                )
                for g in gen
            ]
        )

    def _clip(self, noise: torch.Tensor) -> torch.Tensor:
        if self.noise_clip_std <= 0:
            return noise
        # std as a Python float per image (per batch row when rows have their own generators)
        rows = [noise] if isinstance(self.generator, torch.Generator) or self.generator is None else noise.split(1)
        out = []
        for r in rows:
            c = self.noise_clip_std * r.std().item()
            out.append(r.clamp(min=-c, max=c))
        return out[0] if len(out) == 1 else torch.cat(out)

    def step(
        self, model_output: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        i = self.step_index
        if i >= len(self.timesteps):
            raise RuntimeError(f"FlashEuler: all {len(self.timesteps)} steps are done")
        denoised = sample.to(torch.float32) - model_output * self.sigmas[i]
        sigma_next = self.sigmas[i + 1]
        # drawn at every step, the last included (sigma_next = 0 there): keeps the random stream official
        noise = self._draw(model_output) if noise is None else noise.to(model_output.device, torch.float32)
        noise = self._clip(noise)
        self.step_index += 1
        return (sigma_next * noise * self.s_noise[i] + (1.0 - sigma_next) * denoised).to(model_output.dtype)


class FlowMatchEuler:
    """Deterministic flow-match Euler, z += (sigma_next - sigma) * v', delegated to diffusers.

    `FlowMatchEuler(28, shift=3.0)` is diffusers' own shifted schedule; `FlowMatchEuler(timesteps=DEV_TIMESTEPS)`
    is the dev editing configuration (shift 1, schedule overwritten by the fixed list).
    """

    def __init__(self, steps: int = 28, shift: float = 3.0, timesteps: Sequence[int] | None = None):
        try:
            from diffusers import FlowMatchEulerDiscreteScheduler
        except ImportError as e:  # the GPU image ships without diffusers
            raise ImportError(
                "the flow-match Euler scheduler needs diffusers (pip install diffusers); "
                "use the 'unipc' or 'flash' scheduler instead"
            ) from e
        _check_shift(shift)
        if timesteps is not None:
            steps = len(timesteps)
        _check_steps(steps)
        self._impl = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
        self._impl.set_timesteps(steps)
        if timesteps is not None:
            self._impl.timesteps = torch.tensor([int(t) for t in timesteps], dtype=torch.int64)
            self._impl.sigmas = _sigmas_from_timesteps(timesteps)
        self.timesteps = self._impl.timesteps
        self.sigmas = self._impl.sigmas
        self.step_index = 0

    def step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        if self.step_index >= len(self.timesteps):
            raise RuntimeError(f"FlowMatchEuler: all {len(self.timesteps)} steps are done")
        self._impl._step_index = self.step_index  # our own index: no timestep lookup (lists may repeat values)
        t = self.timesteps[self.step_index].to(torch.float32)
        self.step_index += 1
        return self._impl.step(model_output, t, sample, return_dict=False)[0]


def make_scheduler(
    name: str,
    *,
    steps: int,
    shift: float = 3.0,
    timesteps: Sequence[int] | None = None,
    s_noise: float = 7.5,
    noise_clip_std: float = 2.5,
    generator=None,
):
    """Build a scheduler by name: 'unipc' (steps, shift), 'flash' (timesteps or DEV_TIMESTEPS), 'euler'."""
    if name == "unipc":
        if timesteps is not None:
            raise ValueError("the UniPC scheduler builds its own timesteps; 'timesteps' is only for flash/euler")
        return FlowUniPC(steps, shift=shift)
    if name == "flash":
        ts = DEV_TIMESTEPS if timesteps is None else timesteps
        if timesteps is None and steps != len(DEV_TIMESTEPS):
            raise ValueError(
                f"the flash scheduler runs the fixed {len(DEV_TIMESTEPS)}-step dev list; "
                f"got steps={steps} (pass timesteps=[...] for another list)"
            )
        return FlashEuler(ts, s_noise=s_noise, noise_clip_std=noise_clip_std, generator=generator)
    if name == "euler":
        return FlowMatchEuler(steps, shift=shift, timesteps=timesteps)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
