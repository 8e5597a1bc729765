"""Generations: create, read, and their transitions (each call is one transaction, keyword-only).

queued -> running (claim_generation) -> succeeded (finish_generation) | failed (fail_generation)
| canceled (cancel_generation while queued, or mark_generation_canceled after a cooperative stop).
Images are recorded one by one (add_generation_image) so a client sees them as they come.
Every function takes job_id= like the trainings' ones (the reconciler and the worker treat both kinds alike).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db import jobs
from db.models import Generation, GenerationImage, utcnow
from db.query import owned_page, owned_row


def create_generation(
    session: Session,
    *,
    owner_id: str,
    prompt: str,
    params: dict[str, Any],
    num_images: int,
    total_steps: int,
    webhook_url: str | None = None,
    webhook_events: list[str] | None = None,
) -> Generation:
    gen = Generation(
        owner_id=owner_id,
        prompt=prompt,
        params=params,
        num_images=num_images,
        total_steps=total_steps,
        status="queued",
        webhook_url=webhook_url,
        webhook_events=list(webhook_events or []),
        webhook_open=webhook_url is not None,
    )
    session.add(gen)
    session.commit()
    return gen


def get_generation(session: Session, *, job_id: str, owner_id: str | None = None) -> Generation | None:
    return owned_row(session, Generation, job_id, owner_id)


def list_generations(
    session: Session, *, owner_id: str, status: str | None = None, limit: int = 20, offset: int = 0
) -> tuple[list[Generation], int]:
    return owned_page(
        session,
        Generation,
        owner_id=owner_id,
        limit=limit,
        offset=offset,
        where=[Generation.status == status] if status else [],
    )


def mark_generation_enqueued(session: Session, *, job_id: str, celery_task_id: str | None) -> bool:
    return jobs.mark_enqueued(session, Generation, job_id=job_id, celery_task_id=celery_task_id)


def claim_generation(session: Session, *, job_id: str, worker_id: str) -> bool:
    # A queued generation with a cancel request is never started.
    return jobs.claim(
        session, Generation, job_id=job_id, worker_id=worker_id, where=[Generation.cancel_requested.is_(False)]
    )


def take_over_stale_generation(session: Session, *, job_id: str, worker_id: str, stale_before: datetime) -> bool:
    return jobs.take_over_stale(session, Generation, job_id=job_id, worker_id=worker_id, stale_before=stale_before)


def record_generation_progress(session: Session, *, job_id: str, worker_id: str, step: int) -> bool:
    return jobs.heartbeat(session, Generation, job_id=job_id, worker_id=worker_id, step=step)


def add_generation_image(
    session: Session, *, job_id: str, index: int, storage_key: str, width: int, height: int, seed: int
) -> GenerationImage:
    """Record one finished image; a repeat of (generation, index) after a retry replaces the earlier one."""
    image = session.scalar(
        select(GenerationImage).where(GenerationImage.generation_id == job_id, GenerationImage.index == index)
    )
    if image is None:
        image = GenerationImage(generation_id=job_id, index=index)
        session.add(image)
    image.storage_key, image.width, image.height, image.seed = storage_key, width, height, seed
    session.commit()
    return image


def finish_generation(session: Session, *, job_id: str, worker_id: str) -> bool:
    """running -> succeeded; progress reads total_steps of total_steps."""
    if not jobs.finish(session, Generation, job_id=job_id, worker_id=worker_id, status="succeeded", commit=False):
        session.rollback()
        return False
    session.execute(
        update(Generation)
        .where(Generation.id == job_id)
        .values(step=Generation.total_steps)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return True


def fail_generation(session: Session, *, job_id: str, worker_id: str, error: str) -> bool:
    return jobs.finish(session, Generation, job_id=job_id, worker_id=worker_id, status="failed", error=error)


def stale_running_generations(session: Session, *, stale_before: datetime) -> list[Generation]:
    return jobs.stale_running(session, Generation, stale_before=stale_before)


def requeue_stale_generation(session: Session, *, job_id: str, stale_before: datetime) -> bool:
    return jobs.requeue_stale(session, Generation, job_id=job_id, stale_before=stale_before)


def queued_unsent_generations(session: Session, *, sent_before: datetime) -> list[Generation]:
    return jobs.queued_unsent(session, Generation, sent_before=sent_before)


def cancel_generation(
    session: Session, *, job_id: str, owner_id: str
) -> Literal["canceled", "cancel_requested"] | None:
    """queued -> canceled at once; running -> cancel_requested (the worker stops at its next step);
    None when it is already finished (or not this owner's)."""
    own = [Generation.id == job_id, Generation.owner_id == owner_id]
    if jobs.transition(
        session,
        Generation,
        [*own, Generation.status == "queued"],
        {"status": "canceled", "finished_at": utcnow(), "cancel_requested": True},
    ):
        return "canceled"
    if jobs.transition(session, Generation, [*own, Generation.status == "running"], {"cancel_requested": True}):
        return "cancel_requested"
    return None


def is_generation_cancel_requested(session: Session, *, job_id: str) -> bool:
    return bool(session.scalar(select(Generation.cancel_requested).where(Generation.id == job_id)))


def mark_generation_canceled(session: Session, *, job_id: str, worker_id: str) -> bool:
    """running -> canceled once the worker stopped on cancel_requested (images already stored stay)."""
    return jobs.finish(session, Generation, job_id=job_id, worker_id=worker_id, status="canceled")


def add_generation_warnings(session: Session, *, job_id: str, warnings: list[str]) -> None:
    """Append owner-facing warnings (deduplicated, order kept) to the generation row."""
    gen = session.get(Generation, job_id)
    if gen is None or not warnings:
        return
    merged = list(gen.warnings or [])
    merged += [w for w in warnings if w not in merged]
    gen.warnings = merged
    session.commit()
