"""A training job as two DDP processes (torchrun, gloo on the CPU), started and watched by the worker.
Slow (each test launches two processes that import torch): `make test-slow`."""

from __future__ import annotations

import pytest
from test_worker_training import lora_tensors, new_job
from worker_helpers import put_dataset

from db.owners import create_owner
from db.training import get_training
from worker import training
from worker.context import WorkerContext


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
