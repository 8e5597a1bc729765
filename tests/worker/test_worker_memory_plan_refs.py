"""The memory plan counts reference images: a generation's references (vision-tower tokens in the prompt, raw
patches after the target, in every CFG row) and, for a training on an edit dataset, the dataset's largest
reference set. Each worker test runs the same job on the same (patched) free memory with and without references:
it runs without them and fails at once with them, naming them.

    .venv/bin/python -m pytest tests/worker/test_worker_memory_plan_refs.py -q
"""

from __future__ import annotations

import io
import json
import uuid

import pytest
from PIL import Image
from test_worker_generation_refs import new_generation, stored_image

from core.data.reference_need import largest_reference_set
from core.reference_sizes import total_reference_tokens
from db.datasets import create_dataset, new_dataset_id
from db.owners import create_owner
from db.training import create_training, get_training
from worker import generation, memory_plan, training
from worker.context import WorkerContext
from worker.memory_plan import FULL_SIZE, GIB, ModelShape, generation_need, plan_generation, plan_training

HEADROOM = int(1.5 * GIB)


def test_full_size_plans_count_references():
    refs = total_reference_tokens([(1024, 768)] * 3, 1024, 1024)  # 3 references: 512 px raw copies + vision
    plain = generation_need(FULL_SIZE, width=1024, height=1024)
    free = plain + HEADROOM
    kw = dict(width=1024, height=1024, images=1, cfg=True, weights_resident=False, total_bytes=free)
    assert plan_generation(FULL_SIZE, free_bytes=free, headroom_bytes=HEADROOM, **kw).runs
    p = plan_generation(FULL_SIZE, free_bytes=free, headroom_bytes=HEADROOM, reference_tokens=refs, **kw)
    assert p.action == "refuse" and f"reference images adding {refs} tokens" in p.message
    assert "fewer or smaller reference images" in p.message
    # the same references in a training of batch 2: per sample, with checkpointing
    kw = dict(resolution=1024, batch=2, rank=16, checkpointing=True, headroom_bytes=HEADROOM)
    free = memory_plan.training_need(FULL_SIZE, resolution=1024, batch=2, rank=16) + HEADROOM
    assert plan_training(FULL_SIZE, free_bytes=free, total_bytes=free, **kw).runs
    t = plan_training(FULL_SIZE, free_bytes=free, total_bytes=free, reference_tokens=refs, reference_count=3, **kw)
    assert t.action == "refuse" and f"up to 3 reference image(s) per sample ({refs} more tokens)" in t.message


@pytest.fixture
def wctx(worker_ctx, tiny_model):
    settings = worker_ctx.settings.model_copy(update={"model_path": tiny_model, "progress_interval_s": 0.0})
    c = WorkerContext(settings)
    generation._host = None
    yield c
    c.close()
    generation._host = None


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _dataset(c, owner_id: str, *, references: bool):
    """Three 64 px targets; with references, each has one (the last has two, the largest set)."""
    dataset_id = new_dataset_id()
    prefix = f"datasets/{dataset_id}"
    lines = []
    for i in range(3):
        c.store.put_bytes(f"{prefix}/out{i}.png", _png(Image.new("RGB", (64, 64), (30, 30, 200 - 40 * i))))
        refs = [f"in{i}_{j}.png" for j in range(1 + (i == 2))]
        for r in refs:
            c.store.put_bytes(f"{prefix}/{r}", _png(Image.new("RGB", (96, 64), (200, 30, 30))))
        lines.append(
            {"file": f"out{i}.png", "text": "make it blue", **({"references": refs} if references else {})}
        )
    c.store.put_bytes(f"{prefix}/metadata.jsonl", "\n".join(json.dumps(x) for x in lines).encode())
    with c.sessions() as s:
        ds = create_dataset(
            s,
            dataset_id=dataset_id,
            owner_id=owner_id,
            name="pairs",
            storage_prefix=prefix,
            num_images=3,
            num_captions=3,
            total_bytes=0,
            report={},
        )
    p = {"steps": 1, "rank": 4, "alpha": 4.0, "resolution": 64, "batch_size": 2, "sample_every": 0, "seed": 3}
    p |= {"sample_prompts": [], "gradient_checkpointing": True, "base_precision": "bf16"}
    with c.sessions() as s:
        return create_training(
            s, owner_id=owner_id, dataset_id=ds.id, name="j", trigger="", params=p, total_steps=1
        )


def test_a_training_on_an_edit_dataset_counts_its_largest_reference_set(wctx, monkeypatch, tmp_path):
    c = wctx
    with c.sessions() as s:
        owner = create_owner(s, name=f"mp-{uuid.uuid4().hex[:6]}")
    shape = ModelShape.from_checkpoint(c.settings.model_path)
    need = memory_plan.training_need(shape, resolution=64, batch=2, rank=4, checkpointing=True)
    monkeypatch.setattr(memory_plan, "gpu_memory", lambda: (need + HEADROOM, 24 * GIB))
    plain, edit = _dataset(c, owner.id, references=False), _dataset(c, owner.id, references=True)
    assert training.run_training(plain.id, c) == "succeeded"  # fits exactly without references
    assert training.run_training(edit.id, c) == "failed"
    with c.sessions() as s:
        error = get_training(s, job_id=edit.id).error
    largest = total_reference_tokens([(96, 64)] * 2, 64, 64)  # out2.png's two references
    assert f"up to 2 reference image(s) per sample ({largest} more tokens)" in error
    assert "not enough GPU memory" in error and "fewer or smaller reference images" in error


def test_largest_reference_set_reads_headers_and_buckets_like_the_trainer(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(Image.new("RGB", (128, 64))))  # a 2:1 target: a wide bucket
    (tmp_path / "b.png").write_bytes(_png(Image.new("RGB", (64, 64))))
    (tmp_path / "r.png").write_bytes(_png(Image.new("RGB", (300, 300))))
    rows = [{"file": "a.png", "text": "x", "references": ["r.png"]}, {"file": "b.png", "text": "y"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    got = largest_reference_set(tmp_path, resolution=64)
    from core.data import make_buckets, nearest_bucket

    bw, bh = nearest_bucket(128, 64, make_buckets(64))
    assert (got.name, got.count, got.tokens) == ("a.png", 1, total_reference_tokens([(300, 300)], bh, bw))
    (tmp_path / "metadata.jsonl").write_text(json.dumps(rows[1]))
    assert largest_reference_set(tmp_path, resolution=64).tokens == 0


def test_a_generation_counts_its_references(wctx, monkeypatch):
    c = wctx
    with c.sessions() as s:
        owner = create_owner(s, name=f"mg-{uuid.uuid4().hex[:6]}")
    shape = ModelShape.from_checkpoint(c.settings.model_path)
    need = generation_need(shape, width=64, height=32, images=1, cfg=True, weights_resident=True)
    monkeypatch.setattr(memory_plan, "gpu_memory", lambda: (need + HEADROOM, 24 * GIB))
    ref, _ = stored_image(c, owner.id, (200, 30, 30))
    plain, edit = new_generation(c, owner.id, []), new_generation(c, owner.id, [ref])
    assert generation.run_generation(plain.id, c) == "succeeded"
    assert generation.run_generation(edit.id, c) == "failed"
    from db.generations import get_generation

    with c.sessions() as s:
        error = get_generation(s, job_id=edit.id).error
    tokens = total_reference_tokens([(80, 48)], 32, 64)
    assert f"1 image(s) of 64x32 with reference images adding {tokens} tokens each" in error
