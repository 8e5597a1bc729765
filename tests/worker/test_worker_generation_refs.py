"""A generation with reference images, run in-process on the tiny model: the stored PNG is exactly what the core
sampler gives for the same prompt, seed and references (the official edit layout, CFG with the references kept in
the unconditional input); references separate batches; a deleted reference fails the row naming the item."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from db.generations import create_generation, get_generation
from db.images import create_image, new_image_id
from db.owners import create_owner
from worker import generation
from worker.context import WorkerContext
from worker.generation_batch import batch_key


@pytest.fixture
def gctx(worker_ctx, tiny_model):
    settings = worker_ctx.settings.model_copy(update={"model_path": tiny_model, "progress_interval_s": 0.0})
    c = WorkerContext(settings)
    yield c
    c.close()


def stored_image(c, owner_id, color, size=(80, 48)) -> tuple[str, Image.Image]:
    img = Image.new("RGB", size, color)
    img.paste((255, 255, 255), (10, 10, 30, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    image_id = new_image_id()
    c.store.put_bytes(f"images/{image_id}.png", buf.getvalue())
    with c.sessions() as s:
        create_image(
            s,
            image_id=image_id,
            owner_id=owner_id,
            name="r.png",
            storage_key=f"images/{image_id}.png",
            format="PNG",
            width=size[0],
            height=size[1],
            size_bytes=len(buf.getvalue()),
        )
    return image_id, img


def new_generation(c, owner_id, refs, **kw):
    p = {
        "prompt": "make the shape blue",
        "negative_prompt": " ",
        "loras": [],
        "width": 64,
        "height": 32,
        "steps": 2,
        "guidance": 2.0,
        "seed": 3,
        "preset": "full",
        "num_images": 1,
        "reference_images": refs,
    }
    p.update(kw)
    with c.sessions() as s:
        return create_generation(
            s,
            owner_id=owner_id,
            prompt=p["prompt"],
            params=p,
            num_images=p["num_images"],
            total_steps=p["steps"] * p["num_images"],
        )


def result(c, gen_id) -> tuple[str, bytes | str]:
    with c.sessions() as s:
        row = get_generation(s, job_id=gen_id)
        if row.status != "succeeded":
            return row.status, row.error
        with c.store.open(row.images[0].storage_key) as f:
            return row.status, Image.open(io.BytesIO(f.read())).convert("RGB").tobytes()


def test_references_reach_the_sampler_as_the_core_lays_them_out(gctx):
    from core.loading import load_model, load_tokenizer
    from core.sampler import Sampler

    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="r1")
    a, img_a = stored_image(c, owner.id, (200, 30, 30))
    b, img_b = stored_image(c, owner.id, (30, 30, 200), size=(48, 96))
    out = {}
    for name, refs in [("ab", [a, b]), ("ba", [b, a]), ("none", [])]:
        gen = new_generation(c, owner.id, refs)
        assert generation.run_generation(gen.id, c) == "succeeded", name
        out[name] = result(c, gen.id)[1]
    assert len({out["ab"], out["ba"], out["none"]}) == 3  # the references, and their order, condition the image
    model = load_model(c.settings.model_path, torch.float32)
    want = Sampler(model, load_tokenizer(c.settings.model_path))(
        "make the shape blue", width=64, height=32, steps=2, guidance=2.0, seed=3, references=[img_a, img_b]
    )
    assert out["ab"] == want[0].tobytes()


def test_references_split_batches_and_a_deleted_one_is_named(gctx):
    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="r2")
    a, _ = stored_image(c, owner.id, (200, 30, 30))
    b, _ = stored_image(c, owner.id, (30, 200, 30))
    ga, gb, ga2 = (new_generation(c, owner.id, r) for r in ([a], [b], [a]))
    assert batch_key(ga) == batch_key(ga2) != batch_key(gb)
    assert batch_key(new_generation(c, owner.id, [])) == batch_key(new_generation(c, owner.id, [], seed=9))
    gone = new_generation(c, owner.id, [a, "deleted0"])
    assert generation.run_generation(gone.id, c) == "failed"
    status, error = result(c, gone.id)
    assert status == "failed" and "reference_images[1]: image deleted0 does not exist" in error
