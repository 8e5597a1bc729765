"""The training objective of HiDream-O1-Image: noise an image, ask the model for the clean image back.

The published recipe, per step and per sample:
    sigma ~ U(0.001, 1);  eps ~ N(0, 1);  z_t = (1 - sigma) * x0 + sigma * 8 * eps
    the model gets t = 1 - sigma and returns x_pred (the clean image, x0-parameterised)
    loss = MSE(x_pred, x0) in float32 over the image positions only.

Options beyond the recipe: sigma drawn from a shifted uniform (the schedule shift of the samplers, more
weight at high noise) or from a logit-normal; and "velocity" weighting. The samplers turn x_pred into
a velocity v = (x_pred - z_t) / sigma, so regressing v instead of x0 is the same loss with the x0 error
weighted by 1 / sigma^2 -- which explodes at small sigma, hence it is clipped at `max_weight`.

Usage (the trainer does this):
    obj = Objective()                                  # the recipe
    z_t, t, sigma = obj.noise(x0_tokens, generator)    # x0_tokens [B, N, 3072] patchified, in [-1, 1]
    loss = obj.loss(x_pred, x0_tokens, sigma)          # x_pred [B, N, 3072], or [B, S, 3072] plus mask=[B, S]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SIGMA_DISTRIBUTIONS = ("uniform", "shifted", "logit_normal")
WEIGHTINGS = ("none", "velocity")


@dataclass(frozen=True)
class Objective:
    sigma_dist: str = "uniform"  # the recipe's U(sigma_min, 1); "shifted" / "logit_normal" are options
    sigma_min: float = 0.001  # the recipe's lower bound: the sampler divides by max(sigma, 0.001) too
    shift: float = 3.0  # for "shifted": s*u / (1 + (s-1)*u), the full model's sampling shift
    logit_mean: float = 0.0  # for "logit_normal": sigma = sigmoid(N(mean, std))
    logit_std: float = 1.0
    noise_scale: float = 8.0  # the recipe's noise std (the full model samples with s = 8)
    weighting: str = "none"  # "velocity" = 1/sigma^2 on the x0 error (v-prediction equivalent)
    max_weight: float = 1e4  # clip for the velocity weight; 1/0.001^2 = 1e6 would swamp a batch

    def __post_init__(self) -> None:
        if self.sigma_dist not in SIGMA_DISTRIBUTIONS:
            raise ValueError(f"sigma_dist must be one of {SIGMA_DISTRIBUTIONS}, got {self.sigma_dist!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"sigma_min must be in [0, 1), got {self.sigma_min}")
        if self.shift <= 0 or self.logit_std <= 0 or self.noise_scale <= 0:
            raise ValueError("shift, logit_std and noise_scale must be positive")

    def sample_sigma(
        self, batch: int, generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """[batch] float32 sigmas in [sigma_min, 1], drawn from `generator` only (so a resume replays them)."""
        if self.sigma_dist == "logit_normal":
            n = torch.randn(batch, generator=generator, device=device, dtype=torch.float32)
            u = torch.sigmoid(n * self.logit_std + self.logit_mean)
        else:
            u = torch.rand(batch, generator=generator, device=device, dtype=torch.float32)
            if self.sigma_dist == "shifted":
                u = self.shift * u / (1.0 + (self.shift - 1.0) * u)
        # Map [0, 1] onto [sigma_min, 1]; for "uniform" this is exactly U(sigma_min, 1).
        return self.sigma_min + (1.0 - self.sigma_min) * u

    def noise(
        self, x0: torch.Tensor, generator: torch.Generator, sigma: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x0 [B, N, D] -> (z_t like x0, timestep [B] = 1 - sigma, sigma [B]); eps drawn from `generator`."""
        if x0.dim() != 3:
            raise ValueError(f"x0 must be patch tokens [B, N, D], got shape {tuple(x0.shape)}")
        if sigma is None:
            sigma = self.sample_sigma(x0.shape[0], generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
        return self.mix(x0, eps, sigma), (1.0 - sigma).to(torch.float32), sigma

    def mix(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """z_t for given noise: (1 - sigma) * x0 + sigma * noise_scale * eps (validation brings its own eps)."""
        s = sigma.to(torch.float32).view(-1, 1, 1)
        z_t = (1.0 - s) * x0.to(torch.float32) + s * self.noise_scale * eps.to(torch.float32)
        return z_t.to(x0.dtype)

    def weights(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weight [B] (float32)."""
        if self.weighting == "velocity":
            return (1.0 / sigma.to(torch.float32).clamp_min(1e-8) ** 2).clamp_max(self.max_weight)
        return torch.ones_like(sigma, dtype=torch.float32)

    def loss(
        self, x_pred: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Weighted float32 MSE over image positions.

        x_pred may be the model's whole-sequence output [B, S, D] with `mask` [B, S] true at the image
        positions (each row must hold as many as x0 has tokens), or already [B, N, D] with no mask.
        Every image element counts once, so padding rows and text positions never enter the mean.
        """
        if mask is not None:
            if mask.shape != x_pred.shape[:2]:
                raise ValueError(f"mask {tuple(mask.shape)} does not match x_pred {tuple(x_pred.shape[:2])}")
            counts = mask.sum(dim=1)
            if not bool((counts == x0.shape[1]).all()):
                raise ValueError(f"mask marks {counts.tolist()} image positions per row, x0 has {x0.shape[1]}")
            x_pred = x_pred[mask].view(x0.shape[0], x0.shape[1], -1)
        if x_pred.shape != x0.shape:
            raise ValueError(f"x_pred {tuple(x_pred.shape)} and x0 {tuple(x0.shape)} differ in shape")
        return self.per_sample(x_pred, x0, sigma).mean()

    def per_sample(self, x_pred: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """[B] weighted float32 MSE of each sample (x_pred and x0 both [B, N, D])."""
        err = (x_pred.to(torch.float32) - x0.to(torch.float32)).pow(2).mean(dim=(1, 2))
        return err * self.weights(sigma)
