"""The generation worker's fast path on a tiny model: one request = one batched call, the compiled denoise
warmed up at start and never recompiled by LoRA switches, CFG as one batch or two calls by size."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from test_worker_generation import gctx, make_lora, new_generation, png  # noqa: F401 (fixtures)

from db.generations import get_generation
from db.owners import create_owner
from worker import generation
from worker.context import WorkerContext
from worker.model_host import ModelHost, parse_sizes
from worker.png_encode import encode_pngs


def pixels(c, gen_id) -> list[np.ndarray]:
    with c.sessions() as s:
        row = get_generation(s, job_id=gen_id)
        assert row.status == "succeeded", (row.status, row.error)
        return [
            np.asarray(png(c, im.storage_key), dtype=np.int16) for im in sorted(row.images, key=lambda i: i.index)
        ]


class CountingBackend:
    """torch.compile backend: runs the traced graph eagerly, counts compilations."""

    def __init__(self):
        self.compiles = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1
        return gm.forward


def use_host(monkeypatch, c: WorkerContext, **kw) -> ModelHost:
    """Make `kw` the process's resident host for the settings of `c` (tests pass a compile backend)."""
    s = c.settings
    h = ModelHost(
        s.model_path, s.lora_cache_size, lora_max_rank=s.lora_max_rank, cfg_split_pixels=s.cfg_split_pixels, **kw
    )
    h.key = generation.host_key(s)
    monkeypatch.setattr(generation, "_host", h)
    return h


def test_a_request_of_three_images_is_one_batch_equal_to_three_single_image_requests(gctx, monkeypatch):
    c = gctx
    h = use_host(monkeypatch, c)
    with c.sessions() as s:
        owner = create_owner(s, name="f1")
    calls = []
    real_sample = type(h.sampler).sample
    monkeypatch.setattr(
        type(h.sampler),
        "sample",
        lambda self, images, **kw: calls.append(len(images)) or real_sample(self, images, **kw),
    )
    batch = new_generation(c, owner.id, num_images=3, seed=7)
    assert generation.run_generation(batch.id, c) == "succeeded"
    assert calls == [3]  # one sampler call for the three images
    singles = []
    for i in range(3):
        one = new_generation(c, owner.id, num_images=1, seed=7 + i)
        assert generation.run_generation(one.id, c) == "succeeded"
        singles += pixels(c, one.id)
    assert calls == [3, 1, 1, 1]
    together = pixels(c, batch.id)
    diffs = [int(np.abs(a - b).max()) for a, b in zip(together, singles)]
    print(f"max abs pixel difference, batch of 3 vs one by one: {diffs}")
    assert max(diffs) <= 1  # batching's float noise only (measured 0)
    assert not np.array_equal(together[0], together[1])  # three seeds, three images


@pytest.mark.parametrize("lora_apply", ["merge", "slots"])
def test_compiled_worker_warms_up_then_switches_loras_and_sizes_without_recompiling(gctx, monkeypatch, lora_apply):
    c = WorkerContext(gctx.settings.model_copy(update={"cfg_split_pixels": 64 * 64, "lora_max_rank": 8}))
    torch._dynamo.reset()  # graphs an earlier test compiled for the same layer code would be reused
    backend = CountingBackend()
    h = use_host(monkeypatch, c, compile=backend, lora_apply=lora_apply)
    with c.sessions() as s:
        owner = create_owner(s, name="f2")
    la = make_lora(c, c.settings.model_path, owner.id, seed=1)
    lb = make_lora(c, c.settings.model_path, owner.id, seed=2)
    # 64x32 is under the split threshold (CFG as one 2-row batch), 64x64 at it (two 1-row calls).
    assert h.warm_up(parse_sizes("64x32,64x64")).keys() == {"64x32", "64x64"}
    warm = backend.compiles
    assert h.lora_mode == lora_apply
    # per size three graphs (one image, several images, several prompts: ModelHost.warm_up); with slots, each
    # with the slots off and on
    assert warm == {"merge": 6, "slots": 12}[lora_apply]
    calls_per_step = {}
    for size, loras, n, prompt in [
        ((64, 32), [{"id": la, "scale": 1.0}], 1, "a red circle"),
        ((64, 32), [{"id": lb, "scale": 0.5}], 2, "two small blue squares on the left"),
        ((64, 32), [], 1, " "),  # as long as the negative prompt: no padding
        ((64, 64), [], 1, "a green triangle"),
        ((64, 64), [{"id": la, "scale": 1.0}, {"id": lb, "scale": -0.5}], 1, "a red circle"),
    ]:
        before = h.sampler.denoise_calls
        gen = new_generation(
            c, owner.id, width=size[0], height=size[1], loras=loras, num_images=n, prompt=prompt, steps=2
        )
        assert generation.run_generation(gen.id, c) == "succeeded"
        calls_per_step[size] = (h.sampler.denoise_calls - before) / 2
    assert backend.compiles == warm, f"{backend.compiles - warm} recompiles after the warm-up"
    assert calls_per_step == {(64, 32): 1, (64, 64): 2}  # CFG batched below the threshold, split at it
    # The compiled path gives the eager path's image.
    eager = use_host(monkeypatch, c, lora_apply=lora_apply)
    gen = new_generation(c, owner.id, loras=[{"id": la, "scale": 1.0}], num_images=1, prompt="a red circle")
    assert generation.run_generation(gen.id, c) == "succeeded"
    assert eager.sampler.compiled is False
    first = pixels(c, gen.id)[0]
    use_host(monkeypatch, c, compile=backend, lora_apply=lora_apply)
    gen = new_generation(c, owner.id, loras=[{"id": la, "scale": 1.0}], num_images=1, prompt="a red circle")
    assert generation.run_generation(gen.id, c) == "succeeded"
    assert int(np.abs(pixels(c, gen.id)[0] - first).max()) <= 1


def test_warm_up_runs_at_worker_start_for_the_configured_sizes(gctx, monkeypatch):
    c = WorkerContext(gctx.settings.model_copy(update={"warmup_sizes": "64x32, 32x64"}))
    monkeypatch.setattr(generation, "ctx", lambda: c)
    monkeypatch.setattr(generation, "_host", None)
    thread = generation.start_warm_up(None)
    assert thread is not None
    thread.join(timeout=120)
    assert generation.host(c).warmed.keys() == {"64x32", "32x64"} and generation.host(c).loads == 1
    # "auto" on a CPU (no compile) and "" warm nothing up; a bad size is named.
    for text in ("auto", ""):
        c2 = WorkerContext(gctx.settings.model_copy(update={"warmup_sizes": text}))
        monkeypatch.setattr(generation, "ctx", lambda c2=c2: c2)
        assert generation.start_warm_up(None) is None
    with pytest.raises(ValueError, match="'1000x64' is not WIDTHxHEIGHT"):
        parse_sizes("1000x64")


def test_compiled_code_is_cached_in_the_data_dir_unless_the_environment_says_where(gctx, monkeypatch, tmp_path):
    from worker.model_host import use_compile_cache

    monkeypatch.setattr(generation, "_host", None)  # a host of an earlier test's data dir
    assert generation.host(gctx).compile_cache_dir == gctx.settings.data_dir / "compile-cache"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    use_compile_cache(tmp_path / "cc")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cc").resolve()) and (tmp_path / "cc").is_dir()
    use_compile_cache(tmp_path / "other")  # whoever set it first wins
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cc").resolve())


def plain_lora_plain(monkeypatch, c: WorkerContext, owner_id: str, lora_id: str, mode: str, **host_kw):
    """A host applying LoRAs by `mode`, and its images of one request without the LoRA, one with it and one
    without it again (same prompt and seed): {(mode, "plain" | "lora" | "plain after"): pixels}."""
    h = use_host(monkeypatch, c, lora_apply=mode, **host_kw)
    images = {}
    for name, loras in [("plain", []), ("lora", [{"id": lora_id, "scale": 1.0}]), ("plain after", [])]:
        gen = new_generation(c, owner_id, loras=loras, num_images=1, prompt="a red circle", seed=7)
        assert generation.run_generation(gen.id, c) == "succeeded"
        images[mode, name] = pixels(c, gen.id)[0]
    assert h.lora_mode == mode
    return h, images


def test_merged_loras_give_the_slots_image_and_a_plain_request_after_them_gives_the_base_image(gctx, monkeypatch):
    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="f5")
    la = make_lora(c, c.settings.model_path, owner.id, seed=3)
    images = {}
    for mode in ("slots", "merge"):
        images.update(plain_lora_plain(monkeypatch, c, owner.id, la, mode)[1])
    assert int(np.abs(images["merge", "lora"] - images["slots", "lora"]).max()) <= 1
    assert int(np.abs(images["merge", "lora"] - images["merge", "plain"]).max()) > 20  # the LoRA shows
    for mode in ("slots", "merge"):  # the LoRA is gone again, exactly
        assert np.array_equal(images[mode, "plain after"], images[mode, "plain"])
    assert np.array_equal(images["merge", "plain"], images["slots", "plain"])


def test_the_pngs_of_a_batch_are_encoded_in_parallel_in_order_and_lossless():
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)) for _ in range(5)]
    pngs = encode_pngs(images)
    assert len(pngs) == 5
    for png_bytes, image in zip(pngs, images):
        back = Image.open(io.BytesIO(png_bytes))
        assert back.format == "PNG" and np.array_equal(np.asarray(back), np.asarray(image))
    assert encode_pngs(images[:1]) == pngs[:1] and encode_pngs([]) == []


def test_a_request_during_the_warm_up_waits_for_one_warm_up_call_not_for_all(gctx, monkeypatch):
    """On an H200 the second request of a cold worker waited 15 s for the whole warm-up (three compiles). Now the
    warm-up takes the host's lock per call and lets a waiting request go first."""
    import threading
    import time

    h = use_host(monkeypatch, gctx)
    h.model()
    started = []
    real = type(h.sampler).sample

    def slow_sample(self, images, **kw):
        started.append(time.perf_counter())
        time.sleep(0.3)  # a compile
        return real(self, images, **kw)

    monkeypatch.setattr(type(h.sampler), "sample", slow_sample)
    warm = threading.Thread(target=h.warm_up, args=([(64, 32)],))
    warm.start()
    while not started:
        time.sleep(0.005)
    t = time.perf_counter()
    with h.serving():
        waited, calls_before = time.perf_counter() - t, len(started)
        time.sleep(0.1)  # the request runs; the warm-up does not start a call meanwhile
        assert len(started) == calls_before
    warm.join(timeout=30)
    assert calls_before == 1 and waited < 0.45, (calls_before, waited)  # one call of 0.3 s, not three
    assert len(started) == 3 and "64x32" in h.warmed  # the warm-up finished after the request
