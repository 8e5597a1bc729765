"""The reconciler on the real PostgreSQL and Redis: stale running jobs are resumed, lost messages re-sent."""

from __future__ import annotations

from datetime import timedelta

from db.datasets import create_dataset, new_dataset_id
from db.generations import claim_generation, create_generation, get_generation
from db.jobs import transition
from db.models import TrainingJob, utcnow
from db.owners import create_owner
from db.training import claim_training, create_training, get_training, record_checkpoint
from jobqueue.enqueue import enqueue
from worker.dispatch import waiting_job_ids
from worker.reconciler import reconcile_once


def make_training(s, owner_name: str):
    owner = create_owner(s, name=owner_name)
    ds = create_dataset(
        s,
        dataset_id=new_dataset_id(),
        owner_id=owner.id,
        name="d",
        storage_prefix="datasets/x",
        num_images=1,
        num_captions=1,
        total_bytes=1,
        report={},
    )
    job = create_training(s, owner_id=owner.id, dataset_id=ds.id, name="j", trigger="t", params={}, total_steps=10)
    return owner, job


def drain(c, kind):
    """Empty this run's queue for `kind` (what a worker would take)."""
    from jobqueue.kinds import kind_of
    from worker.celery_app import app

    with app.connection_for_write() as conn:
        ch = conn.default_channel
        for pri in ch.priority_steps:
            ch.client.delete(ch._q_for_pri(kind_of(kind).queue, pri))


def test_enqueue_sends_a_message_the_broker_holds_and_stamps_the_row(worker_ctx):
    with worker_ctx.sessions() as s:
        _, job = make_training(s, "enq")
        task_id = enqueue(s, "training", job.id)
        s.expire_all()
        row = get_training(s, job_id=job.id)
    assert row.celery_task_id == task_id and row.enqueued_at is not None
    assert job.id in waiting_job_ids("training")
    assert job.id not in waiting_job_ids("generation")
    drain(worker_ctx, "training")
    assert job.id not in waiting_job_ids("training")


def test_stale_running_training_is_requeued_with_its_checkpoint_and_sent(worker_ctx):
    c = worker_ctx
    with c.sessions() as s:
        _, job = make_training(s, "stale")
        assert claim_training(s, job_id=job.id, worker_id="dead:1")
        assert record_checkpoint(s, job_id=job.id, worker_id="dead:1", path="trainings/x/ckpt/step-4", step=4)
        # The worker died 10 s ago: its last heartbeat is older than the 3 s timeout.
        transition(s, TrainingJob, [TrainingJob.id == job.id], {"heartbeat_at": utcnow() - timedelta(seconds=10)})
    done = reconcile_once(c, use_lock=False)
    assert done.resumed == [job.id] and done.resent == []
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
        assert (row.status, row.worker_id, row.checkpoint_step) == ("queued", None, 4)
        assert row.enqueued_at is not None
    assert job.id in waiting_job_ids("training")
    # A second pass finds nothing to do: the message is waiting.
    assert reconcile_once(c, use_lock=False).resumed == []
    assert reconcile_once(c, use_lock=False).resent == []
    drain(c, "training")


def test_fresh_running_job_is_left_alone(worker_ctx):
    with worker_ctx.sessions() as s:
        _, job = make_training(s, "fresh")
        assert claim_training(s, job_id=job.id, worker_id="alive:1")
    done = reconcile_once(worker_ctx, use_lock=False)
    assert job.id not in done.resumed + done.resent
    with worker_ctx.sessions() as s:
        assert get_training(s, job_id=job.id).status == "running"


def test_lost_message_is_resent_only_after_the_grace_and_only_when_not_waiting(worker_ctx):
    c = worker_ctx
    with c.sessions() as s:
        owner, job = make_training(s, "lost")
        gen = create_generation(s, owner_id=owner.id, prompt="p", params={}, num_images=1, total_steps=2)
        enqueue(s, "training", job.id)
        enqueue(s, "generation", gen.id)
    # Sent just now and waiting in the broker: nothing to do.
    assert reconcile_once(c, use_lock=False).resent == []
    # Redis lost everything (a flush, a restart without persistence) ...
    drain(c, "training")
    drain(c, "generation")
    # ... still within the grace: a worker may be starting it right now.
    assert reconcile_once(c, use_lock=False).resent == []
    later = utcnow() + timedelta(seconds=5)
    done = reconcile_once(c, now=later, use_lock=False)
    assert sorted(done.resent) == sorted([job.id, gen.id])
    assert job.id in waiting_job_ids("training") and gen.id in waiting_job_ids("generation")
    # An old message that is still waiting (a long queue) is not duplicated.
    assert reconcile_once(c, now=later + timedelta(seconds=5), use_lock=False).resent == []
    drain(c, "training")
    drain(c, "generation")


def test_stale_generation_is_requeued(worker_ctx):
    from db.models import Generation

    with worker_ctx.sessions() as s:
        owner = create_owner(s, name="gen-stale")
        gen = create_generation(s, owner_id=owner.id, prompt="p", params={}, num_images=1, total_steps=2)
        assert claim_generation(s, job_id=gen.id, worker_id="dead:2")
        transition(s, Generation, [Generation.id == gen.id], {"heartbeat_at": utcnow() - timedelta(seconds=10)})
    assert reconcile_once(worker_ctx, use_lock=False).resumed == [gen.id]
    with worker_ctx.sessions() as s:
        assert get_generation(s, job_id=gen.id).status == "queued"
    drain(worker_ctx, "generation")


def test_lock_lets_one_process_do_a_pass_at_a_time(worker_ctx):
    first = reconcile_once(worker_ctx)
    second = reconcile_once(worker_ctx)
    assert not first.skipped and second.skipped
