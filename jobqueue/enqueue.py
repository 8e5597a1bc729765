"""The one way a job's message reaches the broker: by task NAME (nothing here imports task code, nor torch).

    enqueue(session, "training", job.id)                  # after the row is committed; raises if the broker fails
    send_and_record(enqueuer, "generation", gen.id, sessions)   # the API, after the response; never raises

The job row is committed first and is the truth: when sending fails the row simply stays ``queued`` and the
worker's reconciler sends it again, so a broker outage never loses a job or fails the request.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobqueue.kinds import kind_of

log = logging.getLogger(__name__)


def _default_app():
    # Through the module, not `from ... import app`: tests rebuild the app on their own broker by reloading it.
    from jobqueue import celery_app

    return celery_app.app


def enqueue(session: Session, kind: str, job_id: str, app: Any = None) -> str:
    """Send the job's message, then stamp `enqueued_at` on the (still queued) row; returns the Celery task id.

    Send first: a worker may claim the job before the stamp, and the stamp is conditional on `queued`,
    so it is then simply skipped. A crash between the two leaves an unstamped queued row, which the
    reconciler sends again; a duplicate message is harmless (the task claims conditionally).

    A job that already ran (attempt > 0: handed back by a stopping worker, or its worker died) goes ahead
    of every job still waiting to start (celery_app.RESUME_PRIORITY): it holds a checkpoint and a user
    who has been watching it. A new job gets NEW_JOB_PRIORITY from the app's routes.
    """
    from jobqueue.celery_app import RESUME_PRIORITY

    k = kind_of(kind)
    app = app if app is not None else _default_app()
    ran_before = (session.scalar(select(k.model.attempt).where(k.model.id == job_id)) or 0) > 0
    options = {"priority": RESUME_PRIORITY} if ran_before else {}
    # retry=False: a dead broker must fail this publish quickly (the reconciler re-sends), never hang it.
    task_id = app.send_task(k.task, args=[job_id], queue=k.queue, retry=False, **options).id
    k.mark_enqueued(session, job_id=job_id, celery_task_id=task_id)
    return task_id


def send_and_record(enqueuer: "Enqueuer", kind: str, job_id: str, sessions) -> None:
    """``enqueue`` for the API, run after the response, so a slow or dead broker never holds up the request;
    any failure is logged and leaves the row for the reconciler."""
    try:
        with sessions() as s:
            enqueue(s, kind, job_id, app=enqueuer.celery)
    except Exception as e:  # noqa: BLE001 - after the response: the reconciler re-sends a queued, unsent job
        log.warning(
            "could not enqueue %s %s (the reconciler will re-send it): %s",
            kind,
            job_id,
            str(e).splitlines()[0] if str(e) else type(e).__name__,
        )


class Enqueuer:
    """The API's handle on the Celery app (a factory lets tests and embedders send to their own broker)."""

    def __init__(self, celery_app_factory: Callable[[], Any] | None = None):
        self._factory = celery_app_factory

    @cached_property
    def celery(self):
        return self._factory() if self._factory is not None else _default_app()

    def revoke(self, task_id: str | None) -> None:
        """Best effort: a revoked message is dropped by the worker; a missed revoke is harmless because the
        worker's claim only succeeds from `queued` and the row is already `canceled`."""
        if not task_id:
            return
        try:
            self.celery.control.revoke(task_id)
        except Exception as e:
            log.warning("could not revoke task %s: %s", task_id, e)
