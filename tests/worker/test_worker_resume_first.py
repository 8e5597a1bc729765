"""A job handed back by a stopping worker resumes before the jobs that were queued ahead of it: a real Celery
worker process on the run's Redis picks the jobs, one at a time."""

from __future__ import annotations

import time

import pytest
from worker_helpers import put_dataset, worker_env

from db.owners import create_owner
from db.training import create_training, get_training
from jobqueue.enqueue import enqueue
from ops.launcher import Launcher
from worker import training
from worker.context import WorkerContext

PARAMS = {
    "rank": 4,
    "alpha": 4.0,
    "resolution": 64,
    "sample_every": 0,
    "batch_size": 1,
    "seed": 3,
    "gradient_checkpointing": False,
}


@pytest.mark.slow  # ~45 s on 2 busy cores: a Celery worker start and three tiny trainings
def test_a_handed_back_job_resumes_before_the_queued_ones(worker_ctx, tiny_model, tmp_path, monkeypatch):
    c = WorkerContext(
        worker_ctx.settings.model_copy(update={"model_path": tiny_model, "progress_interval_s": 0.0})
    )
    with c.sessions() as s:
        owner = create_owner(s, name="order")
    ds = put_dataset(c, owner.id)

    def new_job(name: str, steps: int):
        with c.sessions() as s:
            return create_training(
                s,
                owner_id=owner.id,
                dataset_id=ds.id,
                name=name,
                trigger="sks",
                params={**PARAMS, "steps": steps},
                total_steps=steps,
            )

    handed_back = new_job("handed-back", 6)
    waiting = [new_job("first-in-line", 3), new_job("second-in-line", 3)]
    with c.sessions() as s:
        for job in waiting:
            enqueue(s, "training", job.id)  # queued before the other job is handed back
    # A worker runs the first job and gets SIGTERM after 2 steps: it hands the job back (and sends it again).
    calls = []
    monkeypatch.setattr(training, "worker_shutting_down", lambda: calls.append(1) or len(calls) >= 3)
    assert training.run_training(handed_back.id, c) == "requeued"
    c.close()

    env = worker_env(
        c,
        tiny_model,
        O1LORA_RECONCILE_INTERVAL_S="0",
        O1LORA_HEARTBEAT_TIMEOUT_S="60",
    )
    procs = Launcher(env, log_dir=tmp_path / "logs")
    ids = [handed_back.id] + [j.id for j in waiting]
    try:
        procs.start_worker("w")
        deadline = time.monotonic() + 180
        while True:
            with worker_ctx.sessions() as s:
                rows = [get_training(s, job_id=i) for i in ids]
            if all(r.status in ("succeeded", "failed") for r in rows):
                break
            assert time.monotonic() < deadline, procs.log("w")[-3000:]
            time.sleep(0.3)
    finally:
        procs.stop_all()
    assert [r.status for r in rows] == ["succeeded"] * 3, [r.error for r in rows]
    # One worker, one job at a time: the order they finished in is the order they were taken.
    order = [r.name for r in sorted(rows, key=lambda r: r.finished_at)]
    assert order == ["handed-back", "first-in-line", "second-in-line"], procs.log("w")[-3000:]
    assert rows[0].attempt == 2 and rows[0].step == 6  # resumed, not restarted
