"""Read-only aggregates for /metrics, computed from the rows at scrape time: every process's work is in the
database, so the API reports what all workers did without any per-process counter."""

from __future__ import annotations

from datetime import datetime
from typing import Iterator

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.models import Generation, TrainingJob, WebhookDelivery

MODELS = {"training": TrainingJob, "generation": Generation}


def jobs_by_status(session: Session, *, kind: str) -> dict[str, int]:
    model = MODELS[kind]
    return dict(session.execute(select(model.status, func.count()).group_by(model.status)).all())


def job_times(session: Session, *, kind: str) -> Iterator[tuple[str, datetime, datetime | None, datetime | None]]:
    """(status, created_at, started_at, finished_at) of every job that started."""
    model = MODELS[kind]
    yield from session.execute(
        select(model.status, model.created_at, model.started_at, model.finished_at)
        .where(model.started_at.is_not(None))
        .execution_options(yield_per=1000)
    )


def training_seconds_per_step(session: Session) -> list[float]:
    """The per-step wall time each finished training last reported (one value per job)."""
    return list(
        session.scalars(
            select(TrainingJob.seconds_per_step).where(
                TrainingJob.status == "succeeded", TrainingJob.seconds_per_step.is_not(None)
            )
        )
    )


def generation_seconds_per_image(session: Session) -> list[float]:
    rows = session.execute(
        select(Generation.started_at, Generation.finished_at, Generation.num_images).where(
            Generation.status == "succeeded",
            Generation.started_at.is_not(None),
            Generation.finished_at.is_not(None),
        )
    )
    return [(done - start).total_seconds() / max(n, 1) for start, done, n in rows]


def webhook_counts(session: Session) -> list[tuple[str, str, int, int]]:
    """(event, status, deliveries, failed attempts) for every (event, status) present."""
    failed = WebhookDelivery.attempts - case((WebhookDelivery.status == "delivered", 1), else_=0)
    return [
        tuple(r)
        for r in session.execute(
            select(
                WebhookDelivery.event, WebhookDelivery.status, func.count(), func.coalesce(func.sum(failed), 0)
            ).group_by(WebhookDelivery.event, WebhookDelivery.status)
        )
    ]
