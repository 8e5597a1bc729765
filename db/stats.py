"""Read-only aggregates for /metrics, computed from the rows at scrape time: every process's work is in the
database, so the API reports what all workers did without any per-process counter."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.models import Generation, TrainingJob, WebhookDelivery
from db.seconds import seconds_between

MODELS = {"training": TrainingJob, "generation": Generation}


def jobs_by_status(session: Session, *, kind: str) -> dict[str, int]:
    model = MODELS[kind]
    return dict(session.execute(select(model.status, func.count()).group_by(model.status)).all())


@dataclass(frozen=True)
class Histogram:
    """One labelled histogram: how many values were at most each bound (cumulative), how many in all, their sum."""

    at_most: tuple[int, ...]
    count: int
    total: float


def histograms(session: Session, value, bounds, *, where=(), group_by=()) -> dict[tuple, Histogram]:
    """Histograms of the SQL expression `value` over the rows `where` selects, one per `group_by` value set,
    counted by the database in one grouped query (a scrape reads a row per label set, not a row per job)."""
    counts = [func.sum(case((value <= bound, 1), else_=0)) for bound in bounds]
    stmt = select(*group_by, func.count(), func.coalesce(func.sum(value), 0.0), *counts).where(*where)
    if group_by:
        stmt = stmt.group_by(*group_by)
    out = {}
    for row in session.execute(stmt):
        keys, (n, total, *at_most) = tuple(row[: len(group_by)]), row[len(group_by) :]
        out[keys] = Histogram(tuple(int(c or 0) for c in at_most), int(n), float(total))
    return out


def _not_negative(seconds):
    """Clock skew between machines can put a start before a submit: count it as no wait, as before."""
    return case((seconds < 0, 0.0), else_=seconds)


def queue_wait(session: Session, *, kind: str, bounds) -> Histogram | None:
    """Submit to first start, over every job of `kind` that started."""
    model = MODELS[kind]
    wait = _not_negative(seconds_between(model.created_at, model.started_at))
    return histograms(session, wait, bounds, where=[model.started_at.is_not(None)]).get(())


def run_time(session: Session, *, kind: str, bounds) -> dict[str, Histogram]:
    """First start to end of every finished job of `kind`, by final status."""
    model = MODELS[kind]
    run = _not_negative(seconds_between(model.started_at, model.finished_at))
    where = [
        model.started_at.is_not(None),
        model.finished_at.is_not(None),
        model.status.in_(("succeeded", "failed", "canceled")),
    ]
    return {
        status: h
        for (status,), h in histograms(session, run, bounds, where=where, group_by=[model.status]).items()
    }


def training_seconds_per_step(session: Session, *, bounds) -> Histogram | None:
    """The per-step wall time each succeeded training last reported (one value per job)."""
    where = [TrainingJob.status == "succeeded", TrainingJob.seconds_per_step.is_not(None)]
    return histograms(session, TrainingJob.seconds_per_step, bounds, where=where).get(())


def generation_seconds_per_image(session: Session, *, bounds) -> Histogram | None:
    """Run time per image of every succeeded generation."""
    images = case((Generation.num_images < 1, 1), else_=Generation.num_images)
    per_image = seconds_between(Generation.started_at, Generation.finished_at) / images
    where = [
        Generation.status == "succeeded",
        Generation.started_at.is_not(None),
        Generation.finished_at.is_not(None),
    ]
    return histograms(session, per_image, bounds, where=where).get(())


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
