"""The three schedulers against the official goldens (../shared/conformance/schedulers, README section 6).

The fake model of the goldens is 0.5*tanh(z), and torch computes tanh with MKL's vector maths, whose
last bit depends on the CPU code path MKL picks. With MKL_CBWR=COMPATIBLE (set before the process
starts) it matches the goldens' machine and every rollout is compared bit for bit; otherwise within
1e-6. `test_bit_exact_in_reproducible_mkl_mode` runs this file again in that mode.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.schedulers import DEV_TIMESTEPS, FlashEuler, FlowMatchEuler, FlowUniPC, make_scheduler

EXACT = os.environ.get("MKL_CBWR") == "COMPATIBLE"


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if EXACT:
        assert torch.equal(actual, expected), (actual.float() - expected.float()).abs().max()
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def goldens(conformance):
    d = conformance / "schedulers"
    # clone: safetensors buffers are not 64-byte aligned, which can change CPU summation order
    return {
        name: {k: v.clone() for k, v in load_file(d / f"{name}.safetensors").items()}
        for name in ("unipc_shift3", "flash_dev", "flow_match_euler")
    }


def rollout(sched, z0, n, bf16_state=False, noises=None):
    """The README's fake-model loop: x_pred = 0.5 tanh(z), v = (x_pred - z)/max(T/1000, 1e-3), step(-v)."""
    z = z0.to(torch.bfloat16) if bf16_state else z0
    zs, sig_used = [], []
    for i in range(n):
        t = sched.timesteps[i]
        sigma = (t.float() / 1000.0).to(torch.float32).clamp_min(0.001)
        zf = z.float()
        v = (0.5 * torch.tanh(zf) - zf) / sigma
        kw = {} if noises is None else {"noise": noises[i]}
        z = sched.step(-v, zf, **kw)
        if bf16_state:
            z = z.to(torch.bfloat16)
        zs.append(z)
        sig_used.append(sigma)
    return torch.stack(zs), torch.stack(sig_used)


@pytest.mark.parametrize("n", [50, 28, 10])
def test_unipc_schedule_matches_official(goldens, n):
    g = goldens["unipc_shift3"]
    s = FlowUniPC(n, shift=3.0)
    assert s.timesteps.dtype == torch.int64
    assert torch.equal(s.timesteps, g[f"n{n}_timesteps"])
    assert torch.equal(s.sigmas, g[f"n{n}_sigmas"])


@pytest.mark.parametrize(
    "key,n,steps", [("n10_rollout", 10, 10), ("n50_first10", 50, 10), ("n28_first10", 28, 10)]
)
def test_unipc_rollout_bit_exact(goldens, key, n, steps):
    g = goldens["unipc_shift3"]
    zs, sig = rollout(FlowUniPC(n, shift=3.0), g["z0"], steps)
    assert torch.equal(sig, g[f"{key}_sigma_used"])
    assert_same(zs, g[f"{key}_z"])


def test_unipc_bf16_state(goldens):
    g = goldens["unipc_shift3"]
    zs, _ = rollout(FlowUniPC(50), g["z0"], 10, bf16_state=True)
    assert zs.dtype == torch.bfloat16
    assert_same(zs, g["n50_first10_bf16state_z"])


def test_unipc_rejects_extra_step():
    s = FlowUniPC(2)
    z = torch.zeros(1, 2, 3072)
    s.step(z, z)
    s.step(z, z)
    with pytest.raises(RuntimeError, match="all 2 steps"):
        s.step(z, z)


def test_flash_schedule(goldens):
    g = goldens["flash_dev"]
    s = FlashEuler()
    assert torch.equal(s.timesteps, g["timesteps"])
    assert torch.equal(s.sigmas, g["sigmas"])
    assert tuple(s.timesteps.tolist()) == DEV_TIMESTEPS


def test_flash_rollout_with_injected_noise(goldens):
    g = goldens["flash_dev"]
    zs, sig = rollout(FlashEuler(s_noise=7.5, noise_clip_std=2.5), g["z0"], 28, noises=g["rollout_noise"])
    assert torch.equal(sig, g["rollout_sigma_used"])
    assert_same(zs, g["rollout_z"])


def test_flash_bf16_state_with_injected_noise(goldens):
    g = goldens["flash_dev"]
    zs, _ = rollout(FlashEuler(), g["z0"], 28, bf16_state=True, noises=g["rollout_noise"])
    assert_same(zs, g["rollout_bf16state_z"])


def test_flash_noise_clip_is_active(goldens):
    """Without the clip the rollout differs: the golden really exercises clipping."""
    g = goldens["flash_dev"]
    zs, _ = rollout(FlashEuler(noise_clip_std=0.0), g["z0"], 28, noises=g["rollout_noise"])
    assert not torch.allclose(zs, g["rollout_z"])


def test_flash_draws_from_its_generator_every_step():
    """Own generator: reproducible, and every step consumes one draw (the last included)."""
    z0 = torch.randn(1, 4, 3072, generator=torch.Generator().manual_seed(0)) * 8
    zs_a, _ = rollout(FlashEuler(generator=torch.Generator().manual_seed(33)), z0, 28)
    ref = torch.Generator().manual_seed(33)
    noises = [torch.randn(1, 4, 3072, generator=ref) for _ in range(28)]
    zs_b, _ = rollout(FlashEuler(), z0, 28, noises=noises)
    assert torch.equal(zs_a, zs_b)


def test_flash_per_row_generators_match_single_image_runs():
    """Batch of 2 with one generator per row == two batch-1 runs (draws and the std clip per image)."""
    z0 = torch.randn(2, 4, 3072, generator=torch.Generator().manual_seed(1)) * 7.5
    gens = [torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]
    zs, _ = rollout(FlashEuler(generator=gens), z0, 28)
    for k, seed in enumerate((10, 11)):
        one, _ = rollout(FlashEuler(generator=torch.Generator().manual_seed(seed)), z0[k : k + 1], 28)
        assert torch.equal(zs[:, k : k + 1], one)


def test_flash_rejects_bad_timesteps():
    with pytest.raises(ValueError, match="strictly decreasing"):
        FlashEuler(timesteps=[10, 500])
    with pytest.raises(ValueError, match="s_noise has 3 values"):
        FlashEuler(s_noise=[1.0, 2.0, 3.0])


def test_flow_match_euler_shift3(goldens):
    g = goldens["flow_match_euler"]
    s = FlowMatchEuler(28, shift=3.0)
    assert torch.equal(s.timesteps, g["shift3_n28_timesteps"])
    assert torch.equal(s.sigmas, g["shift3_n28_sigmas"])
    zs, sig = rollout(s, g["z0"], 28)
    assert torch.equal(sig, g["shift3_n28_rollout_sigma_used"])
    assert_same(zs, g["shift3_n28_rollout_z"])


def test_flow_match_euler_dev_edit(goldens):
    g = goldens["flow_match_euler"]
    s = FlowMatchEuler(shift=1.0, timesteps=DEV_TIMESTEPS)
    assert torch.equal(s.timesteps, g["dev_edit_timesteps"])
    assert torch.equal(s.sigmas, g["dev_edit_sigmas"])
    zs, sig = rollout(s, g["z0"], 28)
    assert torch.equal(sig, g["dev_edit_rollout_sigma_used"])
    assert_same(zs, g["dev_edit_rollout_z"])


def test_make_scheduler_names_and_errors():
    assert isinstance(make_scheduler("unipc", steps=50), FlowUniPC)
    assert isinstance(make_scheduler("flash", steps=28), FlashEuler)
    assert isinstance(make_scheduler("euler", steps=28), FlowMatchEuler)
    with pytest.raises(ValueError, match="unknown scheduler 'ddim'"):
        make_scheduler("ddim", steps=10)
    with pytest.raises(ValueError, match="fixed 28-step"):
        make_scheduler("flash", steps=10)
    with pytest.raises(ValueError, match="positive integer"):
        make_scheduler("unipc", steps=0)


@pytest.mark.skipif(EXACT, reason="already running in the exact mode")
def test_bit_exact_in_reproducible_mkl_mode():
    """Every rollout above, bit for bit, in a process whose MKL follows the goldens' code path."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE"}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
