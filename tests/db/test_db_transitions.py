"""Job state transitions are conditional UPDATEs: only from the expected state, only by the owning worker.

.venv/bin/python -m pytest tests/db/test_db_transitions.py -q
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from db.datasets import create_dataset, delete_dataset, new_dataset_id
from db.generations import (
    add_generation_image,
    add_generation_warnings,
    cancel_generation,
    claim_generation,
    create_generation,
    fail_generation,
    finish_generation,
    get_generation,
    is_generation_cancel_requested,
    mark_generation_canceled,
)
from db.loras import delete_lora, get_lora
from db.models import utcnow
from db.owners import create_api_key, create_owner, owner_for_key
from db.training import (
    add_preview,
    cancel_training,
    claim_training,
    create_training,
    fail_training,
    finish_training,
    get_training,
    is_cancel_requested,
    list_trainings,
    mark_training_canceled,
    mark_training_enqueued,
    queued_unsent_trainings,
    record_checkpoint,
    record_progress,
    requeue_stale_training,
    stale_running_trainings,
    take_over_stale_training,
)


@pytest.fixture
def owner(session):
    import uuid

    return create_owner(session, name=f"owner-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def dataset(session, owner):
    ds_id = new_dataset_id()
    return create_dataset(
        session,
        dataset_id=ds_id,
        owner_id=owner.id,
        name="ds",
        storage_prefix=f"datasets/{ds_id}",
        num_images=2,
        num_captions=2,
        total_bytes=100,
        report={"ok": True},
    )


def new_job(session, owner, dataset, steps=10):
    return create_training(
        session,
        owner_id=owner.id,
        dataset_id=dataset.id,
        name="j",
        trigger="sks",
        params={"steps": steps},
        total_steps=steps,
    )


def test_two_claims_one_wins(session, owner, dataset):
    job = new_job(session, owner, dataset)
    assert claim_training(session, job_id=job.id, worker_id="w1") is True
    assert claim_training(session, job_id=job.id, worker_id="w2") is False
    session.expire_all()
    row = get_training(session, job_id=job.id)
    assert (row.status, row.worker_id, row.attempt) == ("running", "w1", 1)
    assert row.started_at is not None and row.heartbeat_at is not None


def test_concurrent_claims_from_threads_one_wins(Session, owner, dataset):
    with Session() as s:
        job_id = new_job(s, owner, dataset).id
    results, barrier = {}, threading.Barrier(6)

    def claim(i):
        with Session() as s:
            barrier.wait()
            results[i] = claim_training(s, job_id=job_id, worker_id=f"w{i}")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results.values()) == [False] * 5 + [True]
    winner = next(i for i, won in results.items() if won)
    with Session() as s:
        assert get_training(s, job_id=job_id).worker_id == f"w{winner}"


def test_only_the_owning_worker_writes_progress_and_finishes(session, owner, dataset):
    job = new_job(session, owner, dataset)
    assert (
        record_progress(
            session,
            job_id=job.id,
            worker_id="w1",
            step=1,
            total_steps=10,
            loss=0.5,
            seconds_per_step=1.0,
            eta_seconds=9.0,
        )
        is False
    )  # not running yet
    claim_training(session, job_id=job.id, worker_id="w1")
    assert (
        record_progress(
            session,
            job_id=job.id,
            worker_id="w2",
            step=3,
            total_steps=10,
            loss=0.1,
            seconds_per_step=1.0,
            eta_seconds=7.0,
        )
        is False
    )
    assert (
        record_progress(
            session,
            job_id=job.id,
            worker_id="w1",
            step=3,
            total_steps=10,
            loss=0.25,
            seconds_per_step=2.0,
            eta_seconds=14.0,
        )
        is True
    )
    assert record_checkpoint(session, job_id=job.id, worker_id="w1", path="/ck/step-3", step=3) is True
    assert fail_training(session, job_id=job.id, worker_id="w2", error="x") is False
    session.expire_all()
    row = get_training(session, job_id=job.id)
    assert (row.step, row.loss, row.eta_seconds, row.checkpoint_step, row.status) == (3, 0.25, 14.0, 3, "running")

    lora_id = finish_training(
        session,
        job_id=job.id,
        worker_id="w1",
        peft_prefix="loras/x/peft",
        comfyui_key="loras/x/a.safetensors",
        rank=4,
        alpha=4.0,
        size_bytes=10,
    )
    assert lora_id is not None
    assert (
        finish_training(
            session, job_id=job.id, worker_id="w1", peft_prefix=None, comfyui_key=None, rank=4, alpha=4.0
        )
        is None
    )  # already succeeded: no second LoRA
    session.expire_all()
    row = get_training(session, job_id=job.id)
    assert (row.status, row.step, row.lora.id) == ("succeeded", 10, lora_id)
    lora = get_lora(session, lora_id=lora_id, owner_id=owner.id)
    assert (lora.source, lora.trigger, lora.training_job_id, lora.rank) == ("trained", "sks", job.id, 4)
    assert fail_training(session, job_id=job.id, worker_id="w1", error="late") is False


def test_cancel_queued_is_immediate_and_blocks_claim(session, owner, dataset):
    job = new_job(session, owner, dataset)
    assert cancel_training(session, job_id=job.id, owner_id="someone-else") is None
    assert cancel_training(session, job_id=job.id, owner_id=owner.id) == "canceled"
    assert claim_training(session, job_id=job.id, worker_id="w1") is False
    assert cancel_training(session, job_id=job.id, owner_id=owner.id) is None
    session.expire_all()
    row = get_training(session, job_id=job.id)
    assert row.status == "canceled" and row.finished_at is not None


def test_cancel_running_sets_flag_then_worker_marks_canceled(session, owner, dataset):
    job = new_job(session, owner, dataset)
    claim_training(session, job_id=job.id, worker_id="w1")
    assert is_cancel_requested(session, job_id=job.id) is False
    assert cancel_training(session, job_id=job.id, owner_id=owner.id) == "cancel_requested"
    assert is_cancel_requested(session, job_id=job.id) is True
    assert mark_training_canceled(session, job_id=job.id, worker_id="w2") is False
    assert mark_training_canceled(session, job_id=job.id, worker_id="w1") is True
    session.expire_all()
    assert get_training(session, job_id=job.id).status == "canceled"


def test_stale_running_job_is_found_requeued_and_resumed(session, owner, dataset):
    job = new_job(session, owner, dataset)
    fresh = new_job(session, owner, dataset)
    claim_training(session, job_id=job.id, worker_id="w1")
    claim_training(session, job_id=fresh.id, worker_id="w2")
    record_checkpoint(session, job_id=job.id, worker_id="w1", path="/ck/step-5", step=5)
    # Nothing is stale yet; then everything heartbeating before "now + 1 min" counts as stale.
    assert job.id not in {
        j.id for j in stale_running_trainings(session, stale_before=utcnow() - timedelta(minutes=1))
    }
    later = utcnow() + timedelta(minutes=1)
    assert job.id in {j.id for j in stale_running_trainings(session, stale_before=later)}
    # A fresh heartbeat check: w3 cannot take over a job whose heartbeat is newer than the cut-off.
    assert (
        take_over_stale_training(
            session, job_id=fresh.id, worker_id="w3", stale_before=utcnow() - timedelta(minutes=1)
        )
        is False
    )
    assert take_over_stale_training(session, job_id=fresh.id, worker_id="w3", stale_before=later) is True

    assert requeue_stale_training(session, job_id=job.id, stale_before=later) is True
    assert requeue_stale_training(session, job_id=job.id, stale_before=later) is False  # already queued
    assert job.id in {j.id for j in queued_unsent_trainings(session, sent_before=utcnow())}
    assert claim_training(session, job_id=job.id, worker_id="w4") is True
    session.expire_all()
    row = get_training(session, job_id=job.id)
    assert (row.attempt, row.worker_id, row.checkpoint_path, row.checkpoint_step) == (2, "w4", "/ck/step-5", 5)
    assert get_training(session, job_id=fresh.id).attempt == 2


def test_queued_unsent_lists_only_unsent_or_old_messages(session, owner, dataset):
    sent, unsent = new_job(session, owner, dataset), new_job(session, owner, dataset)
    assert mark_training_enqueued(session, job_id=sent.id, celery_task_id="t-1") is True
    ids = {j.id for j in queued_unsent_trainings(session, sent_before=utcnow() - timedelta(minutes=5))}
    assert ids.isdisjoint({sent.id, unsent.id})  # both newer than the grace: the API may be sending right now
    ids = {j.id for j in queued_unsent_trainings(session, sent_before=utcnow() + timedelta(minutes=5))}
    assert {unsent.id, sent.id} <= ids
    claim_training(session, job_id=sent.id, worker_id="w")
    assert mark_training_enqueued(session, job_id=sent.id, celery_task_id="t-2") is False  # running now


def test_preview_repeat_replaces_and_list_filters(session, owner, dataset):
    job = new_job(session, owner, dataset)
    add_preview(session, job_id=job.id, step=5, index=0, storage_key="a.png")
    add_preview(session, job_id=job.id, step=5, index=0, storage_key="b.png")
    add_preview(session, job_id=job.id, step=5, index=1, storage_key="c.png")
    session.expire_all()
    assert [(p.step, p.index, p.storage_key) for p in get_training(session, job_id=job.id).previews] == [
        (5, 0, "b.png"),
        (5, 1, "c.png"),
    ]
    rows, total = list_trainings(session, owner_id=owner.id, status="queued", limit=1)
    assert len(rows) == 1 and total >= 1 and all(r.status == "queued" for r in rows)


def test_dataset_delete_refused_while_a_job_needs_it(session, owner, dataset):
    job = new_job(session, owner, dataset)
    assert delete_dataset(session, dataset_id=dataset.id, owner_id="other") is None
    assert delete_dataset(session, dataset_id=dataset.id, owner_id=owner.id) == "in_use"
    cancel_training(session, job_id=job.id, owner_id=owner.id)
    assert delete_dataset(session, dataset_id=dataset.id, owner_id=owner.id) == "deleted"
    session.expire_all()
    assert get_training(session, job_id=job.id).dataset_id is None  # history kept, link cleared


def test_generation_lifecycle_and_lora_in_use(session, owner, dataset):
    job = new_job(session, owner, dataset)
    claim_training(session, job_id=job.id, worker_id="w")
    lora_id = finish_training(
        session, job_id=job.id, worker_id="w", peft_prefix="p", comfyui_key=None, rank=2, alpha=2.0
    )
    gen = create_generation(
        session,
        owner_id=owner.id,
        prompt="a cat",
        num_images=2,
        total_steps=4,
        params={"loras": [{"id": lora_id, "scale": 1.0}]},
    )
    assert delete_lora(session, lora_id=lora_id, owner_id=owner.id) == "in_use"
    assert claim_generation(session, job_id=gen.id, worker_id="g1") is True
    assert claim_generation(session, job_id=gen.id, worker_id="g2") is False
    add_generation_image(session, job_id=gen.id, index=1, storage_key="g/1.png", width=64, height=64, seed=2)
    add_generation_image(session, job_id=gen.id, index=0, storage_key="g/0.png", width=64, height=64, seed=1)
    assert finish_generation(session, job_id=gen.id, worker_id="g2") is False
    assert finish_generation(session, job_id=gen.id, worker_id="g1") is True
    assert fail_generation(session, job_id=gen.id, worker_id="g1", error="late") is False
    session.expire_all()
    row = get_generation(session, job_id=gen.id, owner_id=owner.id)
    assert row.status == "succeeded" and [i.storage_key for i in row.images] == ["g/0.png", "g/1.png"]
    assert get_generation(session, job_id=gen.id, owner_id="other") is None
    assert delete_lora(session, lora_id=lora_id, owner_id=owner.id) == "deleted"


def test_api_keys_are_hashed_and_resolve_to_their_owner(session, owner):
    key = create_api_key(session, owner_id=owner.id)
    from sqlalchemy import select

    from db.models import ApiKey

    stored = session.scalars(select(ApiKey.key_hash).where(ApiKey.owner_id == owner.id)).all()
    assert key not in stored and len(stored) == 1
    assert owner_for_key(session, key=key).id == owner.id
    assert owner_for_key(session, key=key + "x") is None
    with pytest.raises(ValueError, match="already exists"):
        create_owner(session, name=owner.name)


def test_stale_job_with_a_cancel_request_is_canceled_not_requeued(session, owner, dataset):
    job = new_job(session, owner, dataset)
    claim_training(session, job_id=job.id, worker_id="w1")
    cancel_training(session, job_id=job.id, owner_id=owner.id)  # the worker dies before it sees the flag
    later = utcnow() + timedelta(minutes=1)
    assert requeue_stale_training(session, job_id=job.id, stale_before=later) is True
    session.expire_all()
    row = get_training(session, job_id=job.id)
    assert (row.status, row.worker_id) == ("canceled", None) and row.finished_at is not None
    assert claim_training(session, job_id=job.id, worker_id="w2") is False


def test_revoked_key_no_longer_resolves(session, owner):
    from db.owners import revoke_api_keys

    keep, drop = create_api_key(session, owner_id=owner.id), create_api_key(session, owner_id=owner.id)
    with pytest.raises(ValueError, match="first 8"):
        revoke_api_keys(session, owner_id=owner.id, prefix="o1l_")
    assert revoke_api_keys(session, owner_id="someone-else", prefix=drop[:12]) == 0
    assert revoke_api_keys(session, owner_id=owner.id, prefix=drop[:12]) == 1
    assert owner_for_key(session, key=drop) is None and owner_for_key(session, key=keep).id == owner.id


def new_generation(session, owner, steps=10):
    return create_generation(
        session, owner_id=owner.id, prompt="p", params={"steps": steps}, num_images=1, total_steps=steps
    )


def test_generation_cancel_queued_is_immediate_and_blocks_claim(session, owner):
    gen = new_generation(session, owner)
    assert cancel_generation(session, job_id=gen.id, owner_id="someone-else") is None
    assert cancel_generation(session, job_id=gen.id, owner_id=owner.id) == "canceled"
    assert claim_generation(session, job_id=gen.id, worker_id="w1") is False
    session.expire_all()
    assert get_generation(session, job_id=gen.id).status == "canceled"
    assert cancel_generation(session, job_id=gen.id, owner_id=owner.id) is None


def test_generation_cancel_running_sets_flag_then_worker_marks_canceled(session, owner):
    gen = new_generation(session, owner)
    assert claim_generation(session, job_id=gen.id, worker_id="w1")
    assert is_generation_cancel_requested(session, job_id=gen.id) is False
    assert cancel_generation(session, job_id=gen.id, owner_id=owner.id) == "cancel_requested"
    assert is_generation_cancel_requested(session, job_id=gen.id) is True
    assert mark_generation_canceled(session, job_id=gen.id, worker_id="w2") is False
    assert mark_generation_canceled(session, job_id=gen.id, worker_id="w1") is True
    session.expire_all()
    assert get_generation(session, job_id=gen.id).status == "canceled"


def test_finished_generation_reads_all_steps_and_keeps_warnings(session, owner):
    gen = new_generation(session, owner, steps=50)
    assert claim_generation(session, job_id=gen.id, worker_id="w1")
    add_generation_warnings(session, job_id=gen.id, warnings=["LoRA x: 3 keys placed nowhere"])
    add_generation_warnings(session, job_id=gen.id, warnings=["LoRA x: 3 keys placed nowhere", "second"])
    assert finish_generation(session, job_id=gen.id, worker_id="w1")
    session.expire_all()
    row = get_generation(session, job_id=gen.id)
    assert (row.status, row.step, row.total_steps) == ("succeeded", 50, 50)
    assert row.warnings == ["LoRA x: 3 keys placed nowhere", "second"]
