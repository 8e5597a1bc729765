"""Webhook rows: the owner's signing secret, the deliveries of each job's events, and the jobs that may still
owe one. Keyword-only like the rest of db/; the sender (webhooks/sender.py) is the only writer of deliveries.

A delivery is claimed for one attempt by a conditional UPDATE that pushes its next_attempt_at a lease ahead, so
several senders (one per worker) never send it at the same moment, and a sender that dies mid-send leaves it to
be retried when the lease runs out: at least once, with the same id and body every time.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Generation, Owner, TrainingJob, WebhookDelivery, utcnow

MODELS = {"training": TrainingJob, "generation": Generation}


def ensure_webhook_secret(session: Session, *, owner_id: str, new_secret: str) -> str | None:
    """The owner's secret, set to ``new_secret`` the first time (two racing first calls agree: only a NULL is
    replaced); None for an unknown owner."""
    session.execute(
        update(Owner)
        .where(Owner.id == owner_id, Owner.webhook_secret.is_(None))
        .values(webhook_secret=new_secret)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return session.scalar(select(Owner.webhook_secret).where(Owner.id == owner_id))


def open_webhook_jobs(session: Session, *, kind: str) -> list[Any]:
    """Jobs of ``kind`` with a webhook whose "completed" event is not recorded yet, oldest first."""
    model = MODELS[kind]
    return list(session.scalars(select(model).where(model.webhook_open.is_(True)).order_by(model.created_at)))


def record_delivery(
    session: Session,
    *,
    owner_id: str,
    job_kind: str,
    job_id: str,
    event: str,
    ref: str,
    url: str,
    body: str,
    close_job: bool = False,
) -> str | None:
    """A pending delivery for this event of the job; its id (the webhook-id), or None when this event was
    recorded before (the unique (job, event, ref) makes every event once, whoever records it). ``close_job``
    also ends the job's scan (its last event), in the same transaction."""
    delivery = WebhookDelivery(
        id=f"msg_{uuid.uuid4().hex}",
        owner_id=owner_id,
        job_kind=job_kind,
        job_id=job_id,
        event=event,
        ref=ref,
        url=url,
        body=body,
        status="pending",
        attempts=0,
        next_attempt_at=utcnow(),
    )
    session.add(delivery)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        delivery = None
    if close_job:
        close_webhook_job(session, job_kind=job_kind, job_id=job_id, commit=False)
    session.commit()
    return delivery.id if delivery is not None else None


def close_webhook_job(session: Session, *, job_kind: str, job_id: str, commit: bool = True) -> None:
    model = MODELS[job_kind]
    session.execute(
        update(model)
        .where(model.id == job_id)
        .values(webhook_open=False)
        .execution_options(synchronize_session=False)
    )
    if commit:
        session.commit()


def recorded_refs(session: Session, *, job_id: str, event: str) -> set[str]:
    return set(
        session.scalars(
            select(WebhookDelivery.ref).where(WebhookDelivery.job_id == job_id, WebhookDelivery.event == event)
        )
    )


def last_recorded_at(session: Session, *, job_id: str, event: str) -> datetime | None:
    return session.scalar(
        select(func.max(WebhookDelivery.created_at)).where(
            WebhookDelivery.job_id == job_id, WebhookDelivery.event == event
        )
    )


def claim_due(
    session: Session, *, lease_s: float, limit: int = 20, now: datetime | None = None
) -> list[WebhookDelivery]:
    """Pending deliveries due now, each taken for one attempt (attempts + 1, next try a lease ahead)."""
    now = now or utcnow()
    due = list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
    )
    taken = []
    for delivery_id in due:
        result = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
            )
            .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=now + timedelta(seconds=lease_s))
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if result.rowcount == 1:
            taken.append(delivery_id)
    return [session.get(WebhookDelivery, i, populate_existing=True) for i in taken]


def mark_delivered(session: Session, *, delivery_id: str, status_code: int) -> None:
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(status="delivered", last_status_code=status_code, last_error=None, delivered_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


def mark_attempt_failed(
    session: Session, *, delivery_id: str, status_code: int | None, error: str, retry_at: datetime | None
) -> None:
    """A failed attempt: retried at ``retry_at``, or given up (status failed) when None."""
    values: dict[str, Any] = {"last_status_code": status_code, "last_error": error[:2000]}
    values.update({"next_attempt_at": retry_at} if retry_at is not None else {"status": "failed"})
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending")
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def deliveries_of(session: Session, *, job_id: str, limit: int = 20) -> tuple[list[WebhookDelivery], int]:
    """The job's latest deliveries, newest first, and how many there are in all."""
    rows = list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
            .limit(limit)
        )
    )
    total = (
        session.scalar(select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
        or 0
    )
    return rows, total
