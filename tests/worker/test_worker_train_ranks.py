"""A training job as two DDP processes (torchrun, gloo on the CPU), started and watched by the worker.
Slow (each test launches two processes that import torch): `make test-slow`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_worker_training import lora_tensors, new_job
from worker_helpers import put_dataset

from db.owners import create_owner
from db.training import get_training
from worker import training
from worker.context import WorkerContext
from worker.train_ranks import settings_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def rctx(worker_ctx, tiny_model, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two ranks on two cores
    settings = worker_ctx.settings.model_copy(
        update={"model_path": tiny_model, "progress_interval_s": 0.0, "train_processes": 2}
    )
    c = WorkerContext(settings)
    yield c
    c.close()


@pytest.mark.slow
def test_two_processes_train_the_job_and_rank_0_reports(rctx):
    c = rctx
    with c.sessions() as s:
        owner = create_owner(s, name="ranks")
    ds = put_dataset(c, owner.id)
    job = new_job(c, owner.id, ds.id, steps=4, sample_every=2, sample_prompts=["sks, a red square"])
    assert training.run_training(job.id, c) == "succeeded"
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
        assert (row.status, row.step, row.attempt, row.worker_id) == ("succeeded", 4, 1, c.worker_id)
        assert [(p.step, p.index) for p in row.previews] == [(2, 0), (4, 0)]
    tensors, lora = lora_tensors(c, job.id)
    assert tensors and lora.size_bytes > 0
    log = (c.settings.data_dir / "logs" / "trainings" / f"{job.id}-attempt-1.log").read_text()
    assert f"training {job.id}: succeeded" in log  # printed by rank 0 only
    assert log.count(f"training {job.id}: succeeded") == 1  # (other log lines also name the job)


@pytest.mark.slow
def test_processes_that_die_fail_the_job_with_their_output(rctx):
    c = rctx
    with c.sessions() as s:
        owner = create_owner(s, name="ranks-bad")
    ds = put_dataset(c, owner.id)
    job = new_job(c, owner.id, ds.id, steps=4, resolution=48)  # not a multiple of 32: the trainer refuses
    assert training.run_training(job.id, c) == "failed"
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
    assert row.status == "failed" and "resolution must be a multiple of 32" in row.error


@pytest.mark.slow
def test_a_killed_two_process_job_resumes_on_one_process_from_its_checkpoint(rctx, tmp_path):
    """The worker running a 2-process job dies with its processes (SIGKILL of the whole group: no hand-back);
    a worker with one training process takes the stale job over and finishes it from the 2-rank checkpoint."""
    c = rctx
    with c.sessions() as s:
        owner = create_owner(s, name="ranks-crash")
    ds = put_dataset(c, owner.id)
    job = new_job(c, owner.id, ds.id, steps=40, checkpoint_every=2)
    # the worker in a process of its own (its settings through the environment, as run_ranks passes them on)
    env = {**os.environ, **settings_env(c.settings), "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker.training", job.id],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:  # until rank 0 has recorded a checkpoint of the 2-rank run in the store
            with c.sessions() as s:
                row = get_training(s, job_id=job.id)
            if row.checkpoint_step or worker.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert row.checkpoint_step and row.status == "running", (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the worker, torchrun and both ranks at once
        worker.wait()
        log.close()
    with c.sessions() as s:  # it may have recorded a newer checkpoint (and dropped that one) before the kill
        row = get_training(s, job_id=job.id)
    killed_at = row.checkpoint_step
    state = torch.load(c.store.local_path(f"{row.checkpoint_path}/state.pt"), weights_only=False)
    assert state["world_size"] == 2

    one = WorkerContext(c.settings.model_copy(update={"train_processes": 1}))
    try:
        time.sleep(c.settings.heartbeat_timeout_s + 0.5)  # the dead worker's heartbeat goes stale
        assert training.run_training(job.id, one) == "succeeded"
    finally:
        one.close()
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
    assert (row.status, row.step, row.attempt, row.worker_id) == ("succeeded", 40, 2, one.worker_id)
    assert row.checkpoint_step == 40 and killed_at < 40
    tensors, _ = lora_tensors(c, job.id)
    assert tensors
