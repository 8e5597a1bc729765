"""The sampler: official noise and loop (against the goldens), the cached + CFG-batched path against
the plain per-forward loop on a tiny random model, seeds, callbacks and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from core.layout import patchify
from core.presets import PRESETS, snap_resolution
from core.sampler import Sampler, flow_loop, initial_noise, to_pil
from core.schedulers import DEV_TIMESTEPS, FlashEuler, FlowMatchEuler, FlowUniPC
from core.tiny import build_model

PROMPTS = ["a red circle", "two small blue squares on the left of a large green triangle"]


@pytest.fixture(scope="module")
def sampler():
    torch.manual_seed(0)
    model, tok = build_model()
    return Sampler(model, tok)


def _golden(conformance, name):
    return {k: v.clone() for k, v in load_file(conformance / "schedulers" / f"{name}.safetensors").items()}


# ------------------------------------------------------------------------------ official numerics
def test_initial_noise_is_the_official_pipelines(conformance):
    """Seed 42 at 64x96, cast to bf16 and patchified: the pipeline's own latent, bit for bit."""
    want = load_file(conformance / "cases" / "edit_h64_w96_t0.3_cond.safetensors")["pipeline_target_noise_bf16"]
    got = patchify(initial_noise(42, 64, 96, 8.0).to(torch.bfloat16))
    assert torch.equal(got, want)


class _Stop(Exception):
    pass


def _fake_rollout(sched, z0, n_steps, bf16=False):
    """flow_loop with the goldens' fake model x_pred = 0.5 tanh(z); returns z after each step."""
    zs = []

    def on_step(i, total, x_pred, z):
        zs.append(z)
        if len(zs) == n_steps:
            raise _Stop

    try:
        flow_loop(
            sched, z0.to(torch.bfloat16) if bf16 else z0, lambda z, t: 0.5 * torch.tanh(z.float()), on_step=on_step
        )
    except _Stop:
        pass
    return torch.stack(zs)


@pytest.mark.parametrize(
    "sched,file,key,n,bf16",
    [
        (lambda: FlowUniPC(10), "unipc_shift3", "n10_rollout_z", 10, False),
        (lambda: FlowUniPC(50), "unipc_shift3", "n50_first10_bf16state_z", 10, True),
        (lambda: FlowMatchEuler(28, shift=3.0), "flow_match_euler", "shift3_n28_rollout_z", 28, False),
        (
            lambda: FlowMatchEuler(shift=1.0, timesteps=DEV_TIMESTEPS),
            "flow_match_euler",
            "dev_edit_rollout_z",
            28,
            False,
        ),
    ],
)
def test_flow_loop_reproduces_official_rollouts(conformance, sched, file, key, n, bf16):
    """The sampler's loop itself (sigma, velocity, -v, state dtype) drives the schedulers like the goldens.
    Tolerance 1e-6: the fake model's tanh differs in the last bit between MKL code paths (see
    test_schedulers); a wrong sigma or sign would be off by far more."""
    g = _golden(conformance, file)
    zs = _fake_rollout(sched(), g["z0"], n, bf16)
    assert zs.dtype == g[key].dtype
    torch.testing.assert_close(zs, g[key], rtol=1e-6, atol=1e-6)


def test_flow_loop_flash_with_recorded_noise(conformance):
    g = _golden(conformance, "flash_dev")
    noises = iter(g["rollout_noise"])
    sched = FlashEuler()
    step = sched.step
    sched.step = lambda mo, z: step(mo, z, noise=next(noises))  # inject the recorded draws
    zs = _fake_rollout(sched, g["z0"], 28)
    torch.testing.assert_close(zs, g["rollout_z"], rtol=1e-6, atol=1e-6)


def test_flow_loop_cfg_combines_velocities():
    """Rows [cond; uncond]; v = v_u + g (v_c - v_u) before the negation."""
    z0 = 8 * torch.randn(1, 2, 3072, generator=torch.Generator().manual_seed(5))

    def predict(z_in, t):
        assert z_in.shape[0] == 2 and torch.equal(z_in[0], z_in[1])
        return torch.stack([0.5 * torch.tanh(z_in[0]), 0.2 * torch.sin(z_in[1])])

    got = flow_loop(FlowUniPC(3), z0, predict, guidance=4.0)
    ref, z = FlowUniPC(3), z0
    for step_t in ref.timesteps:
        sigma = (step_t.float() / 1000).clamp_min(1e-3)
        v_c = (0.5 * torch.tanh(z) - z) / sigma
        v_u = (0.2 * torch.sin(z) - z) / sigma
        z = ref.step(-(v_u + 4.0 * (v_c - v_u)), z)
    assert torch.equal(got, z)


# ------------------------------------------------------------------------------ fast path == oracle
def test_cached_batched_cfg_equals_plain_loop(sampler):
    """Prompts of different lengths, CFG, 2 images each: prefix cache + one batched call per step gives
    the images of the official loop (separate full forwards, nothing cached)."""
    kw = dict(width=64, height=96, steps=8, seed=3, num_images=2, preset="full")
    fast = sampler(PROMPTS, return_latents=True, **kw)
    plain = sampler.reference(PROMPTS, return_latents=True, **kw)
    assert fast.shape == (4, 6, 3072)
    assert fast.abs().max() > 0.5  # a real image, not a collapsed one
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4)
    for a, b in zip(to_pil(fast, 96, 64), to_pil(plain, 96, 64)):
        diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_dense_reference_equals_split_reference(sampler):
    kw = dict(width=64, height=64, steps=4, seed=1, return_latents=True)
    torch.testing.assert_close(
        sampler.reference(PROMPTS[0], dense=True, **kw), sampler.reference(PROMPTS[0], **kw), rtol=0, atol=1e-4
    )


def test_dev_preset_fast_equals_plain_and_is_seeded(sampler):
    """Flash: per-image noise streams, so the batch reproduces the single-image runs."""
    fast = sampler(PROMPTS[0], width=64, height=64, preset="dev", seed=7, num_images=2, return_latents=True)
    plain = sampler.reference(
        PROMPTS[0], width=64, height=64, preset="dev", seed=7, num_images=2, return_latents=True
    )
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4)
    second = sampler(PROMPTS[0], width=64, height=64, preset="dev", seed=8, return_latents=True)
    torch.testing.assert_close(fast[1:], second, rtol=0, atol=1e-4)
    assert (fast[0] - fast[1]).abs().max() > 1.0  # different seeds, different images


def test_image_k_uses_seed_plus_k(sampler):
    kw = dict(width=64, height=64, steps=5, return_latents=True)
    many = sampler(PROMPTS, seed=10, num_images=2, **kw)
    torch.testing.assert_close(many[3:4], sampler(PROMPTS[1], seed=13, **kw), rtol=0, atol=1e-4)
    torch.testing.assert_close(many[0:1], sampler(PROMPTS[0], seed=10, **kw), rtol=0, atol=1e-4)
    assert torch.equal(sampler(PROMPTS[0], seed=10, **kw), sampler(PROMPTS[0], seed=10, **kw))


def test_cfg_as_two_unpadded_calls_gives_the_same_images(sampler, monkeypatch):
    kw = dict(width=64, height=64, steps=5, seed=3, num_images=2, return_latents=True)
    batched = sampler(PROMPTS, **kw)
    split = Sampler(sampler.model, sampler.tokenizer, cfg_batch=False)
    calls = []
    den = sampler.model.denoise
    monkeypatch.setattr(sampler.model, "denoise", lambda p, v, t: calls.append(v.shape[0]) or den(p, v, t))
    torch.testing.assert_close(split(PROMPTS, **kw), batched, rtol=0, atol=1e-4)
    assert calls == [4, 4] * 5  # per step: the 4 cond rows, then the 4 uncond rows


def test_prefix_encoded_once_and_one_denoise_call_per_step(sampler, monkeypatch):
    model, calls = sampler.model, {"prefix": 0, "denoise": []}
    enc, den = model.encode_prefix, model.denoise

    def count_prefix(*a, **k):
        calls["prefix"] += 1
        return enc(*a, **k)

    def count_denoise(prefix, vinputs, t):
        calls["denoise"].append(vinputs.shape[0])
        return den(prefix, vinputs, t)

    monkeypatch.setattr(model, "encode_prefix", count_prefix)
    monkeypatch.setattr(model, "denoise", count_denoise)
    sampler(PROMPTS, width=64, height=64, steps=6, num_images=3)
    assert calls["prefix"] == 1
    assert calls["denoise"] == [2 * 2 * 3] * 6  # cond + uncond rows of 6 images, batched, every step


def test_guidance_at_most_one_means_no_cfg(sampler):
    kw = dict(width=64, height=64, steps=4, seed=2, return_latents=True)
    assert torch.equal(sampler(PROMPTS[0], guidance=1.0, **kw), sampler(PROMPTS[0], guidance=0.0, **kw))
    assert not torch.allclose(sampler(PROMPTS[0], guidance=3.0, **kw), sampler(PROMPTS[0], guidance=1.0, **kw))


def test_negative_prompt_matters(sampler):
    kw = dict(width=64, height=64, steps=4, seed=2, return_latents=True)
    assert not torch.allclose(sampler(PROMPTS[0], **kw), sampler(PROMPTS[0], negative_prompt="blurry", **kw))


# ------------------------------------------------------------------------------ outputs and callbacks
def test_outputs_are_rgb_images_of_the_requested_size(sampler):
    imgs = sampler(PROMPTS, width=96, height=64, steps=3, num_images=2)
    assert len(imgs) == 4
    for im in imgs:
        assert isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (96, 64)
    assert np.asarray(imgs[0]).std() > 1  # not a flat image


def test_callback_progress_and_previews(sampler):
    seen = []
    sampler.preview_every = 2
    try:
        sampler(PROMPTS[0], width=64, height=32, steps=5, callback=lambda s, n, p: seen.append((s, n, p)))
    finally:
        sampler.preview_every = 1
    assert [(s, n) for s, n, _ in seen] == [(i, 5) for i in range(1, 6)]
    previews = [p for _, _, p in seen]
    assert [p is not None for p in previews] == [False, True, False, True, True]
    assert previews[-1].size == (64, 32) and previews[-1].mode == "RGB"


def test_callback_exception_stops_sampling(sampler):
    def cancel(step, total, preview):
        if step == 2:
            raise KeyboardInterrupt("canceled")

    with pytest.raises(KeyboardInterrupt):
        sampler(PROMPTS[0], width=32, height=32, steps=10, callback=cancel)


# ------------------------------------------------------------------------------ presets and bad input
def test_presets_are_the_official_settings():
    full, dev = PRESETS["full"], PRESETS["dev"]
    assert (full.scheduler, full.steps, full.guidance, full.shift, full.noise_scale) == (
        "unipc",
        50,
        5.0,
        3.0,
        8.0,
    )
    assert (dev.scheduler, dev.steps, dev.guidance, dev.noise_scale, dev.s_noise, dev.noise_clip_std) == (
        "flash",
        28,
        0.0,
        7.5,
        7.5,
        2.5,
    )
    assert dev.timesteps == DEV_TIMESTEPS


def test_snap_resolution_picks_closest_official_aspect():
    assert snap_resolution(1024, 1024) == (2048, 2048)
    assert snap_resolution(1920, 1080) == (2560, 1440)
    assert snap_resolution(600, 1000) == (1440, 2560)
    assert snap_resolution(1000, 1500) == (1664, 2496)
    with pytest.raises(ValueError, match="positive"):
        snap_resolution(0, 10)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(width=100), "multiples of 32"),
        (dict(height=0), "multiples of 32"),
        (dict(preset="turbo"), "unknown preset 'turbo'"),
        (dict(scheduler="ddim"), "unknown scheduler 'ddim'"),
        (dict(scheduler="flash"), "use preset='dev'"),
        (dict(preset="dev", steps=10), "fixed list of 28"),
        (dict(seed=-1), "seed must be"),
        (dict(num_images=0), "num_images must be"),
        (dict(guidance=-1.0), "guidance must be"),
        (dict(prompts=[]), "prompts must be"),
        (dict(prompts=[3]), "prompts must be"),
        (dict(steps=0), "steps must be a positive integer"),
    ],
)
def test_bad_requests_say_what_is_wrong(sampler, kw, match):
    args = dict(prompts="a red circle", width=64, height=64, steps=2)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        sampler(**args)


def test_dev_preset_runs_other_schedulers_when_asked(sampler):
    """steps on a fixed-list preset need an explicit scheduler; with one, the override is honoured."""
    z = sampler(PROMPTS[0], width=32, height=32, preset="dev", scheduler="unipc", steps=3, return_latents=True)
    assert z.shape == (1, 1, 3072) and torch.isfinite(z).all()


# ------------------------------------------------------------------------------ reference images
@pytest.fixture(scope="module")
def ref_image():
    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(48, 80, 3) * 255).astype(np.uint8))


def test_editing_fast_equals_plain_and_runs_vision_once(sampler, ref_image, monkeypatch):
    kw = dict(width=96, height=64, steps=3, seed=3, num_images=1, references=[ref_image], return_latents=True)
    model, calls = sampler.model, []
    vf = model.vision_features
    monkeypatch.setattr(model, "vision_features", lambda *a, **k: calls.append(1) or vf(*a, **k))
    fast = sampler(PROMPTS, **kw)
    assert len(calls) == 1  # once per request, shared by 2 prompts x cond/uncond
    plain = sampler.reference(PROMPTS, **kw)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4)
    kw.pop("references")
    assert (fast - sampler(PROMPTS, **kw)).abs().max() > 0.1  # the reference really conditions


def test_bad_references(sampler, ref_image):
    with pytest.raises(ValueError, match="references must be a non-empty list"):
        sampler("x", width=64, height=64, steps=1, references=ref_image)
    with pytest.raises(ValueError, match="references must be a non-empty list"):
        sampler("x", width=64, height=64, steps=1, references=[])


def test_dev_editing_uses_the_official_dev_edit_scheduler(sampler, ref_image):
    kw = dict(width=64, height=64, seed=4, references=[ref_image], return_latents=True)
    assert torch.equal(sampler("make it red", preset="dev", **kw), sampler("make it red", preset="dev-edit", **kw))
