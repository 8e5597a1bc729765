"""Training jobs: create, read, and every state transition (each call is one transaction, keyword-only).

queued -> running (claim_training / take_over_stale_training) -> succeeded (finish_training, which also
creates the LoRA row) | failed (fail_training) | canceled (cancel_training while queued, or
mark_training_canceled after a cooperative stop). cancel_requested is a flag set while running.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db import jobs
from db.models import Lora, Preview, TrainingJob, utcnow
from db.query import owned_page, owned_row


def create_training(
    session: Session,
    *,
    owner_id: str,
    dataset_id: str,
    name: str,
    trigger: str,
    params: dict[str, Any],
    total_steps: int,
    webhook_url: str | None = None,
    webhook_events: list[str] | None = None,
) -> TrainingJob:
    job = TrainingJob(
        owner_id=owner_id,
        dataset_id=dataset_id,
        name=name,
        trigger=trigger,
        params=params,
        total_steps=total_steps,
        status="queued",
        webhook_url=webhook_url,
        webhook_events=list(webhook_events or []),
        webhook_open=webhook_url is not None,
    )
    session.add(job)
    session.commit()
    return job


def get_training(session: Session, *, job_id: str, owner_id: str | None = None) -> TrainingJob | None:
    """The job; with ``owner_id``, None unless that owner has it (the API answers 404 either way)."""
    return owned_row(session, TrainingJob, job_id, owner_id)


def list_trainings(
    session: Session, *, owner_id: str, status: str | None = None, limit: int = 20, offset: int = 0
) -> tuple[list[TrainingJob], int]:
    """A page of the owner's jobs, newest first, and the total count."""
    return owned_page(
        session,
        TrainingJob,
        owner_id=owner_id,
        limit=limit,
        offset=offset,
        where=[TrainingJob.status == status] if status else [],
    )


def mark_training_enqueued(session: Session, *, job_id: str, celery_task_id: str | None) -> bool:
    return jobs.mark_enqueued(session, TrainingJob, job_id=job_id, celery_task_id=celery_task_id)


def claim_training(session: Session, *, job_id: str, worker_id: str) -> bool:
    """queued -> running for this worker; False when someone else has it, or it was canceled or finished."""
    # A queued job with a cancel request is never started (worker.runs.take finishes the cancel instead).
    return jobs.claim(
        session, TrainingJob, job_id=job_id, worker_id=worker_id, where=[TrainingJob.cancel_requested.is_(False)]
    )


def take_over_stale_training(session: Session, *, job_id: str, worker_id: str, stale_before: datetime) -> bool:
    return jobs.take_over_stale(
        session, TrainingJob, job_id=job_id, worker_id=worker_id, stale_before=stale_before
    )


def heartbeat_training(session: Session, *, job_id: str, worker_id: str) -> bool:
    return jobs.heartbeat(session, TrainingJob, job_id=job_id, worker_id=worker_id)


def record_progress(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    step: int,
    total_steps: int,
    loss: float | None,
    seconds_per_step: float | None,
    eta_seconds: float | None,
) -> bool:
    """Progress + heartbeat; False when this worker no longer owns the running job (it should stop)."""
    return jobs.heartbeat(
        session,
        TrainingJob,
        job_id=job_id,
        worker_id=worker_id,
        step=step,
        total_steps=total_steps,
        loss=loss,
        seconds_per_step=seconds_per_step,
        eta_seconds=eta_seconds,
        phase=None,  # training has begun
    )


def record_phase(session: Session, *, job_id: str, worker_id: str, phase: str) -> bool:
    """What the job does before its first step (e.g. "prior images: 8 of 24") + heartbeat."""
    return jobs.heartbeat(session, TrainingJob, job_id=job_id, worker_id=worker_id, phase=phase[:200])


def record_validation(session: Session, *, job_id: str, worker_id: str, validation: dict[str, Any]) -> bool:
    """The trainer's validation summary (the whole series: each write replaces the last) + heartbeat."""
    return jobs.heartbeat(session, TrainingJob, job_id=job_id, worker_id=worker_id, validation=validation)


def record_checkpoint(session: Session, *, job_id: str, worker_id: str, path: str, step: int) -> bool:
    return jobs.heartbeat(
        session, TrainingJob, job_id=job_id, worker_id=worker_id, checkpoint_path=path, checkpoint_step=step
    )


def is_cancel_requested(session: Session, *, job_id: str) -> bool:
    return bool(session.scalar(select(TrainingJob.cancel_requested).where(TrainingJob.id == job_id)))


def add_preview(
    session: Session, *, job_id: str, step: int, index: int, storage_key: str, prompt: str = ""
) -> Preview:
    """Record a preview image; a repeat of (job, step, index) after a resume replaces the earlier one."""
    preview = session.scalar(
        select(Preview).where(Preview.job_id == job_id, Preview.step == step, Preview.index == index)
    )
    if preview is None:
        preview = Preview(job_id=job_id, step=step, index=index)
        session.add(preview)
    preview.storage_key, preview.prompt = storage_key, prompt
    session.commit()
    return preview


def finish_training(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    peft_prefix: str | None,
    comfyui_key: str | None,
    rank: int,
    alpha: float,
    size_bytes: int = 0,
    meta: dict[str, Any] | None = None,
) -> str | None:
    """running -> succeeded and the job's LoRA row, in one transaction; returns the LoRA id, None if not owner."""
    job = session.get(TrainingJob, job_id)
    if job is None or not jobs.finish(
        session, TrainingJob, job_id=job_id, worker_id=worker_id, status="succeeded", commit=False
    ):
        session.rollback()
        return None
    lora = Lora(
        owner_id=job.owner_id,
        name=job.name,
        source="trained",
        format="peft",
        training_job_id=job.id,
        peft_prefix=peft_prefix,
        comfyui_key=comfyui_key,
        rank=rank,
        alpha=alpha,
        trigger=job.trigger,
        size_bytes=size_bytes,
        meta=meta or {},
    )
    session.add(lora)
    session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id)
        .values(step=TrainingJob.total_steps, eta_seconds=0.0)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return lora.id


def fail_training(session: Session, *, job_id: str, worker_id: str, error: str) -> bool:
    return jobs.finish(session, TrainingJob, job_id=job_id, worker_id=worker_id, status="failed", error=error)


def mark_training_canceled(session: Session, *, job_id: str, worker_id: str) -> bool:
    """running -> canceled once the trainer stopped on cancel_requested (its checkpoints stay)."""
    return jobs.finish(session, TrainingJob, job_id=job_id, worker_id=worker_id, status="canceled")


def cancel_training(
    session: Session, *, job_id: str, owner_id: str
) -> Literal["canceled", "cancel_requested"] | None:
    """queued -> canceled at once; running -> cancel_requested; None when already finished."""
    own = [TrainingJob.id == job_id, TrainingJob.owner_id == owner_id]
    now = utcnow()
    if jobs.transition(
        session, TrainingJob, [*own, TrainingJob.status == "queued"], {"status": "canceled", "finished_at": now}
    ):
        return "canceled"
    if jobs.transition(session, TrainingJob, [*own, TrainingJob.status == "running"], {"cancel_requested": True}):
        return "cancel_requested"
    return None


def cancel_queued_on_request(session: Session, *, job_id: str) -> bool:
    """queued with cancel_requested -> canceled: a cancel asked while its dead worker's job waited for a resume
    (such a job can never be claimed)."""
    return jobs.transition(
        session,
        TrainingJob,
        [TrainingJob.id == job_id, TrainingJob.status == "queued", TrainingJob.cancel_requested.is_(True)],
        {"status": "canceled", "finished_at": utcnow()},
    )


def hand_back_training(session: Session, *, job_id: str, worker_id: str) -> bool:
    """running (owned by this worker) -> queued for another worker to resume (a warm shutdown)."""
    return jobs.hand_back(session, TrainingJob, job_id=job_id, worker_id=worker_id)


def stale_running_trainings(session: Session, *, stale_before: datetime) -> list[TrainingJob]:
    return jobs.stale_running(session, TrainingJob, stale_before=stale_before)


def requeue_stale_training(session: Session, *, job_id: str, stale_before: datetime) -> bool:
    """running + dead heartbeat -> queued for a resume; -> canceled instead when a cancel was asked (a queued job
    with cancel_requested could never be claimed again). True when the job moved either way."""
    now = utcnow()
    if jobs.transition(
        session,
        TrainingJob,
        [
            TrainingJob.id == job_id,
            TrainingJob.status == "running",
            TrainingJob.cancel_requested.is_(True),
            jobs.stale_clause(TrainingJob, stale_before),
        ],
        {"status": "canceled", "finished_at": now, "worker_id": None},
    ):
        return True
    return jobs.requeue_stale(session, TrainingJob, job_id=job_id, stale_before=stale_before)


def queued_unsent_trainings(session: Session, *, sent_before: datetime) -> list[TrainingJob]:
    return jobs.queued_unsent(session, TrainingJob, sent_before=sent_before)
