"""Each worker process's own heartbeat row (worker/presence.py writes it, /metrics reads it)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import WorkerBeat, utcnow


def beat_worker(
    session: Session,
    *,
    worker_id: str,
    gpu_count: int,
    gpu_allocated_bytes: int,
    gpu_reserved_bytes: int,
    gpu_total_bytes: int,
) -> None:
    """Upsert this worker's row (only this process writes its own id; the insert race is with nobody)."""
    values = dict(
        heartbeat_at=utcnow(),
        gpu_count=gpu_count,
        gpu_allocated_bytes=gpu_allocated_bytes,
        gpu_reserved_bytes=gpu_reserved_bytes,
        gpu_total_bytes=gpu_total_bytes,
    )
    result = session.execute(
        update(WorkerBeat)
        .where(WorkerBeat.worker_id == worker_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:
        session.add(WorkerBeat(worker_id=worker_id, **values))
        try:
            session.flush()
        except IntegrityError:  # the row appeared meanwhile (a restarted process with the same pid): update it
            session.rollback()
            session.execute(update(WorkerBeat).where(WorkerBeat.worker_id == worker_id).values(**values))
    session.commit()


def live_workers(session: Session, *, beat_after: datetime) -> list[WorkerBeat]:
    return list(
        session.scalars(
            select(WorkerBeat).where(WorkerBeat.heartbeat_at >= beat_after).order_by(WorkerBeat.worker_id)
        )
    )
