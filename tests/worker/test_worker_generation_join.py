"""Continuous batching: a lead generation that joins several queued ones runs them all (found by
bench/bench_service.py with 8 concurrent requests: each claim expired the rows joined before it, which then
failed detached from their session and stayed `running` until their heartbeat went stale)."""

from __future__ import annotations

import uuid

import pytest

from db.generations import create_generation, get_generation
from db.owners import create_owner
from worker import generation
from worker.context import WorkerContext


@pytest.fixture
def bctx(worker_ctx, tiny_model):
    settings = worker_ctx.settings.model_copy(
        update={
            "model_path": tiny_model,
            "progress_interval_s": 0.0,
            "generate_max_batch": 8,
            "generate_batch_wait_s": 0.0,
        }
    )
    c = WorkerContext(settings)
    generation._host = None
    yield c
    c.close()
    generation._host = None


def test_a_batch_that_joins_several_queued_generations_runs_them_all(bctx):
    c = bctx
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
        "num_images": 1,
    }
    with c.sessions() as s:
        owner = create_owner(s, name=f"join-{uuid.uuid4().hex[:8]}")
        gens = [
            create_generation(s, owner_id=owner.id, prompt=p["prompt"], params=p, num_images=1, total_steps=2)
            for _ in range(4)
        ]
    assert generation.run_generation(gens[0].id, c) == "succeeded"
    with c.sessions() as s:
        assert [get_generation(s, job_id=g.id).status for g in gens] == ["succeeded"] * 4
