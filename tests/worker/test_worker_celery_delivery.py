"""The broker settings with a real Celery worker process: early acks, so a job that runs longer than the
Redis visibility timeout is delivered once; duplicate messages do nothing."""

from __future__ import annotations

import re
import time

from worker_helpers import RUN_PREFIX, put_dataset, worker_env

from db.owners import create_owner
from db.training import create_training, get_training
from jobqueue.enqueue import enqueue
from ops.launcher import Launcher


def outcomes_of(job_id: str, log: str) -> list[str]:
    """What each delivered task did, from worker.tasks' log lines."""
    return re.findall(rf"training {job_id}: (\w+)$", log, flags=re.M)


def test_long_job_outlives_the_visibility_timeout_without_redelivery(worker_ctx, tiny_model, tmp_path):
    c = worker_ctx
    with c.sessions() as s:
        owner = create_owner(s, name="deliver")
    ds = put_dataset(c, owner.id)
    with c.sessions() as s:
        job = create_training(
            s,
            owner_id=owner.id,
            dataset_id=ds.id,
            name="j",
            trigger="sks",
            total_steps=40,
            params={"rank": 4, "alpha": 4.0, "resolution": 64, "sample_every": 0},
        )
    env = worker_env(
        c,
        tiny_model,
        # Redis would hand an unacked message to another consumer after 1 s.
        O1LORA_BROKER_VISIBILITY_TIMEOUT_S="1",
        O1LORA_RECONCILE_INTERVAL_S="0",
        O1LORA_HEARTBEAT_TIMEOUT_S="60",
    )
    procs = Launcher(env, log_dir=tmp_path / "logs")
    try:
        procs.start_worker("w")
        with c.sessions() as s:
            enqueue(s, "training", job.id)
        unacked_while_running = []
        deadline = time.monotonic() + 120
        while True:
            with c.sessions() as s:
                row = get_training(s, job_id=job.id)
            if row.status == "running":
                unacked_while_running.append(c.redis.hlen(f"{RUN_PREFIX}unacked"))
                if len(unacked_while_running) == 5:
                    with c.sessions() as s:
                        enqueue(s, "training", job.id)  # a duplicate while it runs
            if row.status in ("succeeded", "failed"):
                break
            assert time.monotonic() < deadline, procs.log("w")[-3000:]
            time.sleep(0.2)
        assert row.status == "succeeded", row.error
        started = row.started_at
        ran_for = (row.finished_at - started).total_seconds()
        with c.sessions() as s:
            enqueue(s, "training", job.id)  # a duplicate after the end
        deadline = time.monotonic() + 30
        while len(outcomes_of(job.id, procs.log("w"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        log = procs.log("w")
    finally:
        procs.stop_all()
    assert ran_for > 1.5, "the job must outlive the 1 s visibility timeout for this test to mean anything"
    assert len(unacked_while_running) >= 5 and set(unacked_while_running) == {0}  # acked at start
    # The duplicate sent mid-run waits in the queue (no prefetch while busy) and, like the one sent after
    # the end, finds the job finished.
    outcomes = outcomes_of(job.id, log)
    assert outcomes == ["succeeded", "finished", "finished"], log[-3000:]
    assert row.attempt == 1  # one run: no redelivery, no second start
    assert len(re.findall(r"Task o1lora\.train\[[-0-9a-f]+\] received", log)) == 3
