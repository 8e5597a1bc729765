"""Generation workers as real Celery processes: SIGTERM in the middle of a generation hands it back at once
(not `running` until the heartbeat timeout); only a worker of the generate queue warms up at start."""

from __future__ import annotations

import signal
import time

import pytest
from test_worker_generation import new_generation
from worker_helpers import worker_env

from db.generations import get_generation
from db.owners import create_owner
from jobqueue.enqueue import enqueue
from ops.launcher import Launcher
from worker.dispatch import waiting_job_ids


@pytest.mark.slow  # ~30 s: a worker process start, the model load, a warm shutdown
def test_sigterm_mid_generation_hands_it_back_at_once(worker_ctx, tiny_model, tmp_path):
    c = worker_ctx
    with c.sessions() as s:
        owner = create_owner(s, name="term")
    gen = new_generation(c, owner.id, num_images=1, steps=20000)  # minutes on the tiny model: never ends alone
    env = worker_env(
        c,
        tiny_model,
        O1LORA_RECONCILE_INTERVAL_S="0",
        O1LORA_HEARTBEAT_TIMEOUT_S="600",
        O1LORA_PROGRESS_INTERVAL_S="0.2",
    )
    procs = Launcher(env, log_dir=tmp_path / "logs")
    try:
        procs.start_worker("w", queues="generate")
        with c.sessions() as s:
            enqueue(s, "generation", gen.id)
        deadline = time.monotonic() + 120
        while True:
            with c.sessions() as s:
                row = get_generation(s, job_id=gen.id)
            if row.status == "running" and row.step >= 5:
                break
            assert time.monotonic() < deadline and procs.procs["w"].poll() is None, procs.log("w")[-3000:]
            time.sleep(0.1)
        t0 = time.monotonic()
        procs.kill("w", signal.SIGTERM)  # returns once the worker process has exited
        took = time.monotonic() - t0
        log = procs.log("w")
    finally:
        procs.stop_all()
    with c.sessions() as s:
        row = get_generation(s, job_id=gen.id)
    assert (row.status, row.worker_id) == ("queued", None), log[-3000:]  # not running until a 600 s timeout
    assert 5 <= row.step < 20000 and took < 30
    assert gen.id in waiting_job_ids("generation")  # sent again for the next worker
    assert "handed back to the queue" in log


@pytest.mark.slow  # ~20 s: two worker processes
def test_only_a_worker_of_the_generate_queue_warms_up(worker_ctx, tiny_model, tmp_path):
    c = worker_ctx
    env = worker_env(
        c,
        tiny_model,
        O1LORA_RECONCILE_INTERVAL_S="0",
        O1LORA_WARMUP_SIZES="64x32",
    )
    procs = Launcher(env, log_dir=tmp_path / "logs")
    try:
        procs.start_worker("gen", queues="generate")
        procs.start_worker("train", queues="train")
        deadline = time.monotonic() + 120
        while "warm-up done" not in procs.log("gen") or "ready." not in procs.log("train"):
            assert time.monotonic() < deadline, procs.log("gen")[-3000:] + procs.log("train")[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)
        assert "warm-up 64x32" in procs.log("gen") and "warm-up" not in procs.log("train")
    finally:
        procs.stop_all()
