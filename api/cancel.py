"""POST /v1/{trainings,generations}/{id}/cancel: one handler for both job kinds (they differ only in their row
functions, which jobqueue.kinds names)."""

from __future__ import annotations

from fastapi import BackgroundTasks, status

from api.deps import not_found
from api.errors import ApiError
from api.schemas import CancelPublic
from jobqueue.enqueue import Enqueuer
from jobqueue.kinds import kind_of
from service.events import publish


def cancel_job(
    kind: str, job_id: str, *, owner_id: str, session, enqueuer: Enqueuer, redis, background: BackgroundTasks
) -> CancelPublic:
    """A queued job is canceled at once (its message revoked, best effort, after the response); a running one
    gets a cancel request that its worker honours at its next step. 409 when the job has already ended."""
    k = kind_of(kind)
    outcome = k.cancel(session, job_id=job_id, owner_id=owner_id)
    job = k.get(session, job_id=job_id, owner_id=owner_id)
    if job is None:
        raise not_found(k.label, job_id)
    session.refresh(job)
    if outcome is None:
        raise ApiError(status.HTTP_409_CONFLICT, f"{k.label} {job_id} is already {job.status}")
    if outcome == "canceled":
        background.add_task(enqueuer.revoke, job.celery_task_id)
        publish(redis, kind=kind, job_id=job.id, type="status", data={"status": "canceled"})
    return CancelPublic(id=job.id, status=job.status, cancel_requested=job.cancel_requested)
