"""A generation job run in-process on a tiny model: row -> images in the store -> row, LoRAs swapped on a
resident base, and the idempotency rules of a redelivered message."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
import torch
from PIL import Image

from db.generations import claim_generation, create_generation, get_generation
from db.jobs import transition
from db.loras import create_imported_lora, new_lora_id
from db.models import Generation, utcnow
from db.owners import create_owner
from worker import generation
from worker.context import WorkerContext


@pytest.fixture
def gctx(worker_ctx, tiny_model):
    settings = worker_ctx.settings.model_copy(update={"model_path": tiny_model, "progress_interval_s": 0.0})
    c = WorkerContext(settings)
    yield c
    c.close()


def params(**kw):
    p = {
        "prompt": "a red circle",
        "negative_prompt": " ",
        "loras": [],
        "width": 64,
        "height": 32,
        "steps": 2,
        "guidance": 2.0,
        "seed": 7,
        "preset": "full",
        "num_images": 2,
    }
    p.update(kw)
    return p


def new_generation(c, owner_id, **kw):
    p = params(**kw)
    with c.sessions() as s:
        return create_generation(
            s,
            owner_id=owner_id,
            prompt=p["prompt"],
            params=p,
            num_images=p["num_images"],
            total_steps=p["steps"] * p["num_images"],
        )


def png(c, key) -> Image.Image:
    with c.store.open(key) as f:
        return Image.open(io.BytesIO(f.read())).convert("RGB")


def make_lora(c, model_path, owner_id, seed) -> str:
    """A random LoRA on every language-model linear, stored as a ComfyUI file like an import would be."""
    from core.loading import load_model
    from core.lora import LoraSpec, adapter_state_dict, inject_lora, save_comfyui_file

    model = load_model(model_path)
    spec = LoraSpec(rank=4, alpha=4)
    inject_lora(model, spec)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    lora_id = new_lora_id()
    path = c.settings.data_dir / f"{lora_id}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_comfyui_file(adapter_state_dict(model), spec, path)
    key = f"loras/{lora_id}/lora.safetensors"
    c.store.put_file(key, path)
    with c.sessions() as s:
        create_imported_lora(
            s, lora_id=lora_id, owner_id=owner_id, name="l", format="comfyui", original_key=key, comfyui_key=key
        )
    return lora_id


def test_generation_writes_pngs_of_the_requested_size_and_succeeds(gctx):
    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="g1")
    gen = new_generation(c, owner.id)
    assert generation.run_generation(gen.id, c) == "succeeded"
    with c.sessions() as s:
        row = get_generation(s, job_id=gen.id)
        assert (row.status, row.attempt, row.error) == ("succeeded", 1, None)
        assert [(im.index, im.width, im.height, im.seed) for im in row.images] == [(0, 64, 32, 7), (1, 64, 32, 8)]
        keys = [im.storage_key for im in row.images]
    a, b = png(c, keys[0]), png(c, keys[1])
    assert a.size == (64, 32) and a.tobytes() != b.tobytes()  # two seeds, two images
    # The same request again gives the same pixels (seeded), and the finished job is not run again.
    again = new_generation(c, owner.id)
    assert generation.run_generation(again.id, c) == "succeeded"
    with c.sessions() as s:
        assert png(c, get_generation(s, job_id=again.id).images[0].storage_key).tobytes() == a.tobytes()
    assert generation.run_generation(gen.id, c) == "finished"


def test_each_request_logs_where_its_time_went(gctx, caplog):
    """One INFO line per batch splits the request's seconds into phases that add up to its total (operators read
    it; bench/bench_service.py takes its breakdown table from it)."""
    import re

    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="timing")
    gen = new_generation(c, owner.id)
    with caplog.at_level("INFO", logger="worker.generation"):
        assert generation.run_generation(gen.id, c) == "succeeded"
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"generation {gen.id}: ")]
    m = re.search(r"2 image\(s\) 64x32, \d+ steps, ([\d.]+) s \((.*)\); kept graph (yes|no)$", line)
    assert m, line
    phases = dict((k, float(v)) for k, v in (p.split() for p in m.group(2).split(", ")))
    assert list(phases) == ["wait", "setup", "sampling", "decode", "png", "store", "finish"]
    assert min(phases.values()) >= 0 and abs(sum(phases.values()) - float(m.group(1))) < 0.005
    assert phases["sampling"] == max(phases.values())  # the model's steps dominate, even on the tiny model


def test_loras_with_scales_change_the_image_without_reloading_the_base(gctx):
    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="g2")
    la = make_lora(c, c.settings.model_path, owner.id, seed=1)
    lb = make_lora(c, c.settings.model_path, owner.id, seed=2)
    runs = {}
    for name, loras in [
        ("base", []),
        ("a", [{"id": la, "scale": 1.0}]),
        ("a0", [{"id": la, "scale": 0.0}]),
        ("ab", [{"id": la, "scale": 1.0}, {"id": lb, "scale": 0.5}]),
        ("base2", []),
    ]:
        gen = new_generation(c, owner.id, loras=loras, num_images=1)
        assert generation.run_generation(gen.id, c) == "succeeded", name
        with c.sessions() as s:
            runs[name] = png(c, get_generation(s, job_id=gen.id).images[0].storage_key).tobytes()
    assert runs["a"] != runs["base"] and runs["ab"] != runs["a"]
    assert runs["a0"] == runs["base"] and runs["base2"] == runs["base"]  # scale 0 and no LoRA = the plain base
    h = generation.host(c)
    assert h.loads == 1  # one base load for five generations
    assert h.cached_lora_ids() == [la, lb]


def test_missing_lora_fails_the_job_with_a_clear_error(gctx):
    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="g3")
    gen = new_generation(c, owner.id, loras=[{"id": "nope", "scale": 1.0}])
    assert generation.run_generation(gen.id, c) == "failed"
    with c.sessions() as s:
        row = get_generation(s, job_id=gen.id)
    assert row.status == "failed" and "LoRA nope does not exist" in row.error


def test_redelivery_rules_fresh_running_is_left_stale_running_is_taken_over(gctx):
    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="g4")
    gen = new_generation(c, owner.id, num_images=1)
    with c.sessions() as s:
        assert claim_generation(s, job_id=gen.id, worker_id="other:1")
    assert generation.run_generation(gen.id, c) == "busy"  # its worker is alive
    with c.sessions() as s:
        transition(s, Generation, [Generation.id == gen.id], {"heartbeat_at": utcnow() - timedelta(seconds=60)})
    assert generation.run_generation(gen.id, c) == "succeeded"  # its worker is dead
    with c.sessions() as s:
        row = get_generation(s, job_id=gen.id)
    assert (row.attempt, row.worker_id) == (2, c.worker_id)


def test_lora_cache_keeps_the_most_recently_used(gctx):
    from worker.model_host import ModelHost

    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="g5")
    ids = [make_lora(c, c.settings.model_path, owner.id, seed=k) for k in range(3)]
    host = ModelHost(c.settings.model_path, lora_capacity=2)
    binds = []

    def file_of(lora_id):
        def local():
            binds.append(lora_id)
            return generation.lora_path(c, lora_id, owner.id)

        return local

    first = host.lora(ids[0], file_of(ids[0]))
    host.lora(ids[1], file_of(ids[1]))
    assert host.lora(ids[0], file_of(ids[0])) is first  # a hit: not read again
    host.lora(ids[2], file_of(ids[2]))  # evicts ids[1], the least recently used
    assert host.cached_lora_ids() == [ids[0], ids[2]]
    host.lora(ids[1], file_of(ids[1]))
    assert binds == [ids[0], ids[1], ids[2], ids[1]] and host.loads == 1
