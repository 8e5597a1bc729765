"""The job lifecycle shared by training jobs and generations: conditional UPDATEs, one transaction per call.

Every transition names the state it expects in its WHERE clause and reports whether it happened (rowcount 1),
so two workers racing for one job cannot both win. Public wrappers live in db.training and db.generations.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from db.models import Generation, TrainingJob, utcnow

Job = TypeVar("Job", TrainingJob, Generation)
REQUEUED = {"status": "queued", "worker_id": None, "enqueued_at": None}  # a new message will be sent for it


def transition(
    session: Session, model: type[Job], where: list, values: dict[str, Any], commit: bool = True
) -> bool:
    """UPDATE the one row matching ``where``; whether it did. commit=False leaves the transaction open."""
    result = session.execute(
        update(model).where(*where).values(**values).execution_options(synchronize_session=False)
    )
    if commit:
        session.commit()
    return result.rowcount == 1


def mark_enqueued(
    session: Session, model: type[Job], *, job_id: str, celery_task_id: str | None, now: datetime | None = None
) -> bool:
    return transition(
        session,
        model,
        [model.id == job_id, model.status == "queued"],
        {"enqueued_at": now or utcnow(), "celery_task_id": celery_task_id},
    )


def claim(
    session: Session,
    model: type[Job],
    *,
    job_id: str,
    worker_id: str,
    now: datetime | None = None,
    where: list = (),
) -> bool:
    """queued (and ``where``) -> running for this worker, attempt + 1."""
    now = now or utcnow()
    return transition(
        session,
        model,
        [model.id == job_id, model.status == "queued", *where],
        {
            "status": "running",
            "worker_id": worker_id,
            "heartbeat_at": now,
            "attempt": model.attempt + 1,
            "started_at": func.coalesce(model.started_at, now),
            "error": None,
        },
    )


def take_over_stale(
    session: Session,
    model: type[Job],
    *,
    job_id: str,
    worker_id: str,
    stale_before: datetime,
    now: datetime | None = None,
) -> bool:
    """A running job whose heartbeat is older than ``stale_before`` passes to ``worker_id`` (for a resume)."""
    return transition(
        session,
        model,
        [model.id == job_id, model.status == "running", stale_clause(model, stale_before)],
        {"worker_id": worker_id, "heartbeat_at": now or utcnow(), "attempt": model.attempt + 1},
    )


def stale_clause(model, stale_before: datetime):
    return or_(model.heartbeat_at.is_(None), model.heartbeat_at < stale_before)


def owned_running(model, job_id: str, worker_id: str) -> list:
    return [model.id == job_id, model.status == "running", model.worker_id == worker_id]


def heartbeat(
    session: Session, model: type[Job], *, job_id: str, worker_id: str, now: datetime | None = None, **values: Any
) -> bool:
    """Refresh the heartbeat (and set ``values``) while this worker still owns the running job."""
    return transition(
        session, model, owned_running(model, job_id, worker_id), {"heartbeat_at": now or utcnow(), **values}
    )


def finish(
    session: Session,
    model: type[Job],
    *,
    job_id: str,
    worker_id: str,
    status: str,
    error: str | None = None,
    now: datetime | None = None,
    commit: bool = True,
) -> bool:
    if status not in ("succeeded", "failed", "canceled"):
        raise ValueError(f"not a terminal status: {status!r}")
    now = now or utcnow()
    return transition(
        session,
        model,
        owned_running(model, job_id, worker_id),
        {"status": status, "error": error, "finished_at": now, "heartbeat_at": now},
        commit=commit,
    )


def stale_running(session: Session, model: type[Job], *, stale_before: datetime) -> list[Job]:
    return list(
        session.scalars(
            select(model)
            .where(model.status == "running", stale_clause(model, stale_before))
            .order_by(model.created_at)
        )
    )


def requeue_stale(session: Session, model: type[Job], *, job_id: str, stale_before: datetime) -> bool:
    """running with a dead heartbeat -> queued (keeps progress and checkpoint), so a new message resumes it."""
    return transition(
        session,
        model,
        [model.id == job_id, model.status == "running", stale_clause(model, stale_before)],
        REQUEUED,
    )


def hand_back(session: Session, model: type[Job], *, job_id: str, worker_id: str) -> bool:
    """running (owned by this worker) -> queued at once, keeping progress and checkpoint (a warm shutdown)."""
    return transition(session, model, owned_running(model, job_id, worker_id), REQUEUED)


def hand_back_all(session: Session, *, worker_id: str) -> list[str]:
    """Every job (training or generation) running for ``worker_id`` -> queued, keeping progress and checkpoint;
    the ids. For a launcher that had to kill its worker: the next start resumes them without waiting for
    their heartbeat to go stale."""
    ids = []
    for model in (TrainingJob, Generation):
        running = list(
            session.scalars(select(model.id).where(model.status == "running", model.worker_id == worker_id))
        )
        for job_id in running:
            if hand_back(session, model, job_id=job_id, worker_id=worker_id):
                ids.append(job_id)
    return ids


def queued_unsent(session: Session, model: type[Job], *, sent_before: datetime) -> list[Job]:
    """Queued jobs whose message was sent before ``sent_before`` (maybe lost with the broker), or never sent
    and created before it (the API sends right after its response: a newer job is not "unsent" yet)."""
    return list(
        session.scalars(
            select(model)
            .where(
                model.status == "queued",
                or_(
                    and_(model.enqueued_at.is_(None), model.created_at < sent_before),
                    model.enqueued_at < sent_before,
                ),
            )
            .order_by(model.created_at)
        )
    )
