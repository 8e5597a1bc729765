"""Generation jobs under trouble (issue 16): cancel while running, a worker's SIGTERM, a re-run that keeps the
images already stored, non-finite output, LoRA keys that place nowhere."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from test_worker_generation import gctx, make_lora, new_generation, png  # noqa: F401 (fixtures)

from db.generations import add_generation_image, cancel_generation, get_generation
from db.loras import create_imported_lora, new_lora_id
from db.owners import create_owner
from worker import generation
from worker.dispatch import waiting_job_ids


def row(c, gen_id):
    with c.sessions() as s:
        r = get_generation(s, job_id=gen_id)
        r.images  # noqa: B018 - load them while the session is open
        return r


def pixels(c, gen_id) -> dict[int, np.ndarray]:
    return {im.index: np.asarray(png(c, im.storage_key), dtype=np.int16) for im in row(c, gen_id).images}


def lora_variant(c, owner_id, base_id, change) -> str:
    """A stored copy of LoRA `base_id` with its tensors passed through change(dict) -> dict."""
    with c.sessions() as s:
        from db.loras import get_lora

        src = get_lora(s, lora_id=base_id, owner_id=owner_id)
    tensors = change(load_file(str(c.store.local_path(src.comfyui_key))))
    lora_id = new_lora_id()
    path = c.settings.data_dir / f"{lora_id}.safetensors"
    save_file(tensors, str(path))
    key = f"loras/{lora_id}/lora.safetensors"
    c.store.put_file(key, path)
    with c.sessions() as s:
        create_imported_lora(
            s, lora_id=lora_id, owner_id=owner_id, name="v", format="comfyui", original_key=key, comfyui_key=key
        )
    return lora_id


def test_cancel_of_a_running_generation_stops_it_at_the_next_step_and_keeps_stored_images(gctx):
    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="h1")
    earlier = new_generation(c, owner.id, num_images=1, seed=7)
    assert generation.run_generation(earlier.id, c) == "succeeded"
    gen = new_generation(c, owner.id, num_images=2, seed=7, steps=400)
    first = row(c, earlier.id).images[0]
    with c.sessions() as s:  # image 0 is stored already (an earlier attempt of this generation)
        add_generation_image(s, job_id=gen.id, index=0, storage_key=first.storage_key, width=64, height=32, seed=7)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", generation.run_generation(gen.id, c)))
    t.start()
    deadline = time.monotonic() + 60
    while row(c, gen.id).step < 400 + 3:  # a few steps into image 1 (image 0 counts as 400 done)
        assert time.monotonic() < deadline and t.is_alive(), out
        time.sleep(0.02)
    with c.sessions() as s:
        assert cancel_generation(s, job_id=gen.id, owner_id=owner.id) == "cancel_requested"
    asked_at = row(c, gen.id).step
    t.join(60)
    r = row(c, gen.id)
    assert out["r"] == "canceled" and r.status == "canceled" and r.error is None
    assert asked_at <= r.step <= asked_at + 100 < r.total_steps  # stopped soon (room for a loaded box), not at 800
    assert [(im.index, im.storage_key) for im in r.images] == [(0, first.storage_key)]  # kept


def test_sigterm_hands_the_generation_back_at_once_and_the_rerun_equals_a_straight_run(gctx, monkeypatch):
    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="h2")
    straight = new_generation(c, owner.id, num_images=2, seed=11, steps=4)
    assert generation.run_generation(straight.id, c) == "succeeded"
    gen = new_generation(c, owner.id, num_images=2, seed=11, steps=4)
    asked = []
    monkeypatch.setattr(generation, "worker_shutting_down", lambda: asked.append(1) or len(asked) >= 2)
    assert generation.run_generation(gen.id, c) == "requeued"
    r = row(c, gen.id)
    assert (r.status, r.worker_id, r.attempt) == ("queued", None, 1)  # not left running until a timeout
    assert gen.id in waiting_job_ids("generation")  # sent again at once
    monkeypatch.setattr(generation, "worker_shutting_down", lambda: False)
    assert generation.run_generation(gen.id, c) == "succeeded"
    assert row(c, gen.id).attempt == 2
    a, b = pixels(c, straight.id), pixels(c, gen.id)
    assert a.keys() == b.keys() == {0, 1} and all(np.array_equal(a[i], b[i]) for i in a)


def test_a_rerun_makes_only_the_missing_images(gctx, monkeypatch):
    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="h3")
    straight = new_generation(c, owner.id, num_images=3, seed=5)
    assert generation.run_generation(straight.id, c) == "succeeded"
    gen = new_generation(c, owner.id, num_images=3, seed=5)
    kept = row(c, straight.id).images[1]
    with c.sessions() as s:  # an earlier attempt stored image 1 before its worker died
        add_generation_image(s, job_id=gen.id, index=1, storage_key=kept.storage_key, width=64, height=32, seed=6)
    seeds = []
    h = generation.host(c)
    real = type(h.sampler).sample
    monkeypatch.setattr(
        type(h.sampler),
        "sample",
        lambda self, images, **kw: seeds.append([im.seed for im in images]) or real(self, images, **kw),
    )
    assert generation.run_generation(gen.id, c) == "succeeded"
    assert seeds == [[5, 7]]  # images 0 and 2 only
    r = row(c, gen.id)
    assert [(im.index, im.seed) for im in r.images] == [(0, 5), (1, 6), (2, 7)]
    assert r.images[1].storage_key == kept.storage_key  # image 1 untouched
    a, b = pixels(c, straight.id), pixels(c, gen.id)
    assert max(int(np.abs(a[i] - b[i]).max()) for i in a) <= 1


def test_nonfinite_output_fails_the_job_naming_the_lora(gctx):
    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="h4")
    good = make_lora(c, c.settings.model_path, owner.id, seed=1)
    # Finite but huge up-projections (the loader refuses NaN weights outright): the output overflows to Inf/NaN.
    bad = lora_variant(
        c,
        owner.id,
        good,
        lambda t: {k: torch.full_like(v, 3e38) if "lora_up" in k or "lora_B" in k else v for k, v in t.items()},
    )
    gen = new_generation(c, owner.id, loras=[{"id": bad, "scale": 1.0}], num_images=2)
    assert generation.run_generation(gen.id, c) == "failed"
    r = row(c, gen.id)
    assert r.status == "failed" and r.images == []
    assert "NaN/Inf" in r.error and bad in r.error and "LoRA" in r.error
    # The NaN LoRA leaves nothing behind: the next generation with the good LoRA succeeds.
    ok = new_generation(c, owner.id, loras=[{"id": good, "scale": 1.0}], num_images=1)
    assert generation.run_generation(ok.id, c) == "succeeded"


def test_lora_keys_that_place_nowhere_become_a_warning_on_the_generation(gctx):
    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="h5")
    good = make_lora(c, c.settings.model_path, owner.id, seed=1)

    def add_text_encoder_keys(t):
        t = dict(t)
        t["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 32)
        t["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(32, 4)
        return t

    mixed = lora_variant(c, owner.id, good, add_text_encoder_keys)
    gen = new_generation(c, owner.id, loras=[{"id": mixed, "scale": 1.0}], num_images=1)
    assert generation.run_generation(gen.id, c) == "succeeded"
    r = row(c, gen.id)
    assert len(r.warnings) == 1 and mixed in r.warnings[0] and "lora_te_text_model_encoder" in r.warnings[0]
    assert "ignored" in r.warnings[0]
    plain = new_generation(c, owner.id, loras=[{"id": good, "scale": 1.0}], num_images=1)
    assert generation.run_generation(plain.id, c) == "succeeded" and row(c, plain.id).warnings == []
