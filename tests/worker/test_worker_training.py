"""A training job run in-process on a tiny model: progress, previews, LoRA files and row; cancel; a
warm-shutdown hand-back and the resume that continues it exactly."""

from __future__ import annotations

import threading
import time

from safetensors.torch import load_file
from worker_helpers import put_dataset

from db.loras import get_lora
from db.owners import create_owner
from db.training import cancel_training, create_training, get_training
from worker import training
from worker.dispatch import waiting_job_ids


def new_job(c, owner_id, dataset_id, steps=4, **params):
    p = {
        "steps": steps,
        "rank": 4,
        "alpha": 4.0,
        "learning_rate": 1e-3,
        "resolution": 64,
        "batch_size": 1,
        "sample_every": 0,
        "sample_prompts": [],
        "seed": 3,
        "gradient_checkpointing": False,
    }
    p.update(params)
    with c.sessions() as s:
        return create_training(
            s, owner_id=owner_id, dataset_id=dataset_id, name="j", trigger="sks", params=p, total_steps=steps
        )


def lora_tensors(c, job_id):
    with c.sessions() as s:
        job = get_training(s, job_id=job_id)
        lora = get_lora(s, lora_id=job.lora.id)
    return load_file(str(c.store.local_path(lora.comfyui_key))), lora


def test_training_succeeds_with_progress_previews_and_both_lora_formats(tctx):
    c = tctx
    with c.sessions() as s:
        owner = create_owner(s, name="t1")
    ds = put_dataset(c, owner.id)
    job = new_job(c, owner.id, ds.id, steps=4, sample_every=2, sample_prompts=["sks, a red square"])
    assert training.run_training(job.id, c) == "succeeded"
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
        assert (row.status, row.step, row.total_steps, row.attempt, row.error) == ("succeeded", 4, 4, 1, None)
        assert row.loss is not None and row.loss > 0
        assert [(p.step, p.index, p.prompt) for p in row.previews] == [
            (2, 0, "sks, a red square"),
            (4, 0, "sks, a red square"),
        ]
        assert all(c.store.exists(p.storage_key) for p in row.previews)
        assert row.checkpoint_step == 4 and c.store.exists(f"{row.checkpoint_path}/state.pt")
    tensors, lora = lora_tensors(c, job.id)
    assert (lora.rank, lora.alpha, lora.trigger, lora.source) == (4, 4.0, "sks", "trained")
    assert any(k.endswith("lora_A.weight") for k in tensors)
    assert c.store.exists(f"{lora.peft_prefix}/adapter_config.json")
    assert c.store.exists(f"{lora.peft_prefix}/adapter_model.safetensors")
    assert lora.size_bytes > 0
    # Redelivered after the end: nothing happens.
    assert training.run_training(job.id, c) == "finished"


def test_cancel_stops_within_a_few_steps_and_keeps_the_checkpoint(tctx):
    c = tctx
    with c.sessions() as s:
        owner = create_owner(s, name="t2")
    ds = put_dataset(c, owner.id)
    job = new_job(c, owner.id, ds.id, steps=400)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", training.run_training(job.id, c)))
    t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with c.sessions() as s:
            if get_training(s, job_id=job.id).step >= 2:
                break
        time.sleep(0.05)
    with c.sessions() as s:
        assert cancel_training(s, job_id=job.id, owner_id=owner.id) == "cancel_requested"
        asked_at = get_training(s, job_id=job.id).step
    t.join(60)
    assert out["r"] == "canceled"
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
        assert row.status == "canceled" and row.lora is None
    # The flag is read off-thread, one DB query in flight at a time: on a loaded box that query can span tens
    # of these tiny steps. Far below 400 still says "stopped".
    assert asked_at <= row.checkpoint_step <= asked_at + 60 < 400
    assert c.store.exists(f"{row.checkpoint_path}/weights.safetensors")


def test_shutdown_hands_the_job_back_and_the_resume_equals_an_uninterrupted_run(tctx, monkeypatch):
    c = tctx
    with c.sessions() as s:
        owner = create_owner(s, name="t3")
    ds = put_dataset(c, owner.id)
    straight = new_job(c, owner.id, ds.id, steps=6)
    assert training.run_training(straight.id, c) == "succeeded"

    job = new_job(c, owner.id, ds.id, steps=6)
    calls = []
    # should_stop is asked before every step: the 4th question comes after 3 steps.
    monkeypatch.setattr(training, "worker_shutting_down", lambda: calls.append(1) or len(calls) >= 4)
    assert training.run_training(job.id, c) == "requeued"
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
        assert (row.status, row.worker_id, row.checkpoint_step, row.step) == ("queued", None, 3, 3)
    assert job.id in waiting_job_ids("training")  # sent again at once, not after a heartbeat timeout
    monkeypatch.setattr(training, "worker_shutting_down", lambda: False)
    assert training.run_training(job.id, c) == "succeeded"
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
    assert (row.attempt, row.step) == (2, 6)
    a, _ = lora_tensors(c, straight.id)
    b, _ = lora_tensors(c, job.id)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)  # bit-exact on the CPU: the resume lost nothing


def test_deleted_dataset_fails_the_job_with_a_clear_error(tctx):
    c = tctx
    with c.sessions() as s:
        owner = create_owner(s, name="t4")
    ds = put_dataset(c, owner.id, n=1)
    job = new_job(c, owner.id, ds.id)
    from db.models import Dataset

    with c.sessions() as s:
        s.delete(s.get(Dataset, ds.id))
        s.commit()
    assert training.run_training(job.id, c) == "failed"
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
    assert row.status == "failed" and "dataset" in row.error and "no longer exists" in row.error
