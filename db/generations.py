"""Generations: create, read, and their transitions (each call is one transaction, keyword-only).

queued -> running (claim_generation) -> succeeded (finish_generation) | failed (fail_generation).
Images are recorded one by one (add_generation_image) so a client sees them as they come.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import jobs
from db.models import Generation, GenerationImage
from db.query import owned_page, owned_row


def create_generation(session: Session, *, owner_id: str, prompt: str, params: dict[str, Any],
                      num_images: int, total_steps: int) -> Generation:
    gen = Generation(owner_id=owner_id, prompt=prompt, params=params, num_images=num_images,
                     total_steps=total_steps, status="queued")
    session.add(gen)
    session.commit()
    return gen


def get_generation(session: Session, *, generation_id: str, owner_id: str | None = None) -> Generation | None:
    return owned_row(session, Generation, generation_id, owner_id)


def list_generations(session: Session, *, owner_id: str, status: str | None = None, limit: int = 20,
                     offset: int = 0) -> tuple[list[Generation], int]:
    return owned_page(session, Generation, owner_id=owner_id, limit=limit, offset=offset,
                      where=[Generation.status == status] if status else [])


def mark_generation_enqueued(session: Session, *, generation_id: str, celery_task_id: str | None) -> bool:
    return jobs.mark_enqueued(session, Generation, job_id=generation_id, celery_task_id=celery_task_id)


def claim_generation(session: Session, *, generation_id: str, worker_id: str) -> bool:
    return jobs.claim(session, Generation, job_id=generation_id, worker_id=worker_id)


def take_over_stale_generation(session: Session, *, generation_id: str, worker_id: str,
                               stale_before: datetime) -> bool:
    return jobs.take_over_stale(session, Generation, job_id=generation_id, worker_id=worker_id,
                                stale_before=stale_before)


def record_generation_progress(session: Session, *, generation_id: str, worker_id: str, step: int) -> bool:
    return jobs.heartbeat(session, Generation, job_id=generation_id, worker_id=worker_id, step=step)


def add_generation_image(session: Session, *, generation_id: str, index: int, storage_key: str, width: int,
                         height: int, seed: int) -> GenerationImage:
    """Record one finished image; a repeat of (generation, index) after a retry replaces the earlier one."""
    image = session.scalar(select(GenerationImage).where(GenerationImage.generation_id == generation_id,
                                                         GenerationImage.index == index))
    if image is None:
        image = GenerationImage(generation_id=generation_id, index=index)
        session.add(image)
    image.storage_key, image.width, image.height, image.seed = storage_key, width, height, seed
    session.commit()
    return image


def finish_generation(session: Session, *, generation_id: str, worker_id: str) -> bool:
    return jobs.finish(session, Generation, job_id=generation_id, worker_id=worker_id, status="succeeded")


def fail_generation(session: Session, *, generation_id: str, worker_id: str, error: str) -> bool:
    return jobs.finish(session, Generation, job_id=generation_id, worker_id=worker_id, status="failed",
                       error=error)


def stale_running_generations(session: Session, *, stale_before: datetime) -> list[Generation]:
    return jobs.stale_running(session, Generation, stale_before=stale_before)


def requeue_stale_generation(session: Session, *, generation_id: str, stale_before: datetime) -> bool:
    return jobs.requeue_stale(session, Generation, job_id=generation_id, stale_before=stale_before)


def queued_unsent_generations(session: Session, *, sent_before: datetime) -> list[Generation]:
    return jobs.queued_unsent(session, Generation, sent_before=sent_before)
