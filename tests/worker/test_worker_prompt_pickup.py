"""A real Celery worker takes the next job as soon as it is sent after the previous one ended: the Redis
transport's listening is re-armed by the event loop's tick, which jobqueue.celery_app.PromptPickup keeps
short (without it a job sent then waited up to 1 s in Redis, 0.85 s on average)."""

from __future__ import annotations

import statistics
import time

from test_worker_generation import new_generation
from worker_helpers import worker_env

from db.generations import get_generation
from db.owners import create_owner
from jobqueue.enqueue import enqueue
from ops.launcher import Launcher


def test_a_job_sent_right_after_the_previous_one_ended_starts_at_once(worker_ctx, tiny_model, tmp_path):
    c = worker_ctx
    with c.sessions() as s:
        owner = create_owner(s, name="pickup")
    env = worker_env(
        c,
        tiny_model,
        O1LORA_RECONCILE_INTERVAL_S="0",
        O1LORA_WARMUP_SIZES="",
    )
    procs = Launcher(env, log_dir=tmp_path / "logs")
    waits = []
    try:
        procs.start_worker("w", queues="generate")
        for i in range(7):  # one at a time, as a client that waits for each image sends them
            gen = new_generation(c, owner.id, num_images=1, steps=1, seed=i)
            with c.sessions() as s:
                enqueue(s, "generation", gen.id)
            deadline = time.monotonic() + 120
            while True:
                with c.sessions() as s:
                    row = get_generation(s, job_id=gen.id)
                    status, created, started = row.status, row.created_at, row.started_at
                if status in ("succeeded", "failed"):
                    break
                assert time.monotonic() < deadline, procs.log("w")[-3000:]
                time.sleep(0.01)
            assert status == "succeeded"
            if i >= 2:  # the first ones load the model and compile nothing else worth timing
                waits.append((started - created).total_seconds())
    finally:
        procs.stop_all()
    # Sent ~10 ms after the previous job ended: taken within a tick (50 ms) plus a claim, not after up to 1 s.
    assert statistics.median(waits) < 0.3, waits
