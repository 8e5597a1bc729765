"""Continuous batching: compatible queued generations share one batched sampler call, each row keeping its
own images, progress, cancel and outcome; incompatible ones and what does not fit the batch wait their turn."""

from __future__ import annotations

import threading
import time

import numpy as np
from test_worker_generation import gctx, new_generation, png  # noqa: F401 (fixtures)

from db.generations import cancel_generation, get_generation
from db.owners import create_owner
from worker import generation
from worker.context import WorkerContext
from worker.generation_batch import join_batch


def row(c, gen_id):
    with c.sessions() as s:
        r = get_generation(s, job_id=gen_id)
        r.images  # noqa: B018 - loaded while the session is open
        return r


def pixels(c, gen_id) -> list[np.ndarray]:
    return [np.asarray(png(c, im.storage_key), dtype=np.int16) for im in row(c, gen_id).images]


def count_sampler_calls(monkeypatch, c) -> list[int]:
    calls = []
    h = generation.host(c)
    real = type(h.sampler).sample
    monkeypatch.setattr(
        type(h.sampler), "sample", lambda self, images, **kw: calls.append(len(images)) or real(self, images, **kw)
    )
    return calls


def settings(c, **kw) -> WorkerContext:
    return WorkerContext(c.settings.model_copy(update=kw))


def test_two_compatible_queued_generations_are_one_sampler_call_with_the_images_each_gives_alone(
    gctx, monkeypatch
):
    c = settings(gctx, generate_max_batch=4, generate_batch_wait_s=0.0)
    with c.sessions() as s:
        owner = create_owner(s, name="b1")
    a = new_generation(c, owner.id, prompt="a red circle", num_images=1, seed=3)
    b = new_generation(
        c, owner.id, prompt="two small blue squares on the left", negative_prompt="blurry", num_images=2, seed=40
    )
    other = new_generation(c, owner.id, prompt="a red circle", num_images=1, seed=3, steps=3)  # other steps
    calls = count_sampler_calls(monkeypatch, c)
    assert generation.run_generation(a.id, c) == "succeeded"
    assert calls == [3]  # a's image and b's two in one call
    assert row(c, b.id).status == "succeeded" and row(c, other.id).status == "queued"
    assert generation.run_generation(b.id, c) == "finished"  # b's own message, delivered later: nothing
    assert [im.seed for im in row(c, b.id).images] == [40, 41]
    # Alone (batching off), each gives the same images.
    alone = settings(gctx, generate_max_batch=1)
    a1 = new_generation(alone, owner.id, prompt="a red circle", num_images=1, seed=3)
    b1 = new_generation(
        alone,
        owner.id,
        prompt="two small blue squares on the left",
        negative_prompt="blurry",
        num_images=2,
        seed=40,
    )
    assert generation.run_generation(a1.id, alone) == generation.run_generation(b1.id, alone) == "succeeded"
    assert calls == [3, 1, 2]
    diffs = [
        int(np.abs(x - y).max())
        for x, y in zip(pixels(c, a.id) + pixels(c, b.id), pixels(c, a1.id) + pixels(c, b1.id))
    ]
    print(f"max abs pixel difference, batched with another request vs alone: {diffs}")
    assert len(diffs) == 3 and max(diffs) <= 1


def test_the_batch_is_bounded_and_waits_a_bounded_time_for_more(gctx):
    # The window is long next to a DB insert on a loaded CI machine, so "returned when full" and "waited the
    # window out" cannot be confused.
    c = settings(gctx, generate_max_batch=3, generate_batch_wait_s=3.0)
    with c.sessions() as s:
        owner = create_owner(s, name="b2")
    lead = new_generation(c, owner.id, num_images=1)
    big = new_generation(c, owner.id, num_images=3)  # would make 4 images: does not fit
    with c.sessions() as s:
        from db.generations import claim_generation

        assert claim_generation(s, job_id=lead.id, worker_id=c.worker_id)
    late = {}
    t = threading.Thread(target=lambda: (time.sleep(0.1), late.setdefault("g", new_generation(c, owner.id))))
    t.start()
    t0 = time.monotonic()
    joined = join_batch(c, lead)  # 1 + 2 images = the max: returns at once
    took = time.monotonic() - t0
    t.join()
    assert [g.id for g in joined] == [late["g"].id] and 0.1 <= took < 2.5
    assert row(c, big.id).status == "queued" and row(c, late["g"].id).status == "running"
    t0 = time.monotonic()
    assert join_batch(c, lead) == [] and 3.0 <= time.monotonic() - t0 < 6.0  # nothing more: waits, then goes


def test_a_canceled_row_of_a_batch_ends_canceled_while_the_other_succeeds(gctx):
    c = settings(gctx, generate_max_batch=4, generate_batch_wait_s=0.0)
    with c.sessions() as s:
        owner = create_owner(s, name="b3")
    a = new_generation(c, owner.id, num_images=1, steps=100)
    b = new_generation(c, owner.id, prompt="a green triangle", num_images=1, steps=100)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", generation.run_generation(a.id, c)))
    t.start()
    deadline = time.monotonic() + 60
    while row(c, b.id).step < 3:
        assert time.monotonic() < deadline and t.is_alive(), out
        time.sleep(0.02)
    with c.sessions() as s:
        assert cancel_generation(s, job_id=b.id, owner_id=owner.id) == "cancel_requested"
    t.join(60)
    ra, rb = row(c, a.id), row(c, b.id)
    assert out["r"] == "succeeded" and ra.status == "succeeded" and len(ra.images) == 1
    assert rb.status == "canceled" and rb.images == [] and rb.step < 100
