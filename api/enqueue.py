"""Sending job messages to Celery by task NAME (the API never imports the task code, nor torch).

The job row is committed first and is the truth: when sending fails the row simply stays ``queued`` and the
worker's reconciler sends it again, so a broker outage never loses a job or fails the request.
"""
from __future__ import annotations

import logging
from functools import cached_property
from typing import Any, Callable

log = logging.getLogger(__name__)

TRAIN = ("o1lora.train", "train")          # (task name, queue)
GENERATE = ("o1lora.generate", "generate")


def send_and_record(enqueuer: "Enqueuer", task: tuple[str, str], job_id: str, sessions, mark) -> None:
    """Send the job's message and record it on the row (``mark``: db.*.mark_*_enqueued); run after the response,
    so a slow or dead broker never holds up the request. A failed send leaves the row for the reconciler."""
    task_id = enqueuer.send(task, job_id)
    if task_id is None:
        return
    try:
        with sessions() as s:
            mark(s, job_id, task_id)
    except Exception as e:  # noqa: BLE001 - after the response: a lost mark only means the reconciler re-sends
        # (a duplicate message is harmless: a worker's claim succeeds only from `queued`).
        log.warning("sent %s for %s but could not record it (the reconciler will re-send): %s", task[0], job_id,
                    str(e).splitlines()[0] if str(e) else type(e).__name__)


class Enqueuer:
    def __init__(self, celery_app_factory: Callable[[], Any] | None = None):
        self._factory = celery_app_factory

    @cached_property
    def celery(self):
        if self._factory is not None:
            return self._factory()
        from worker.celery_app import app  # lazily: the worker package owns every Celery setting
        return app

    def send(self, task: tuple[str, str], job_id: str) -> str | None:
        """Publish the message; the Celery task id, or None when the broker could not take it."""
        name, queue = task
        try:
            # retry=False: a dead broker must fail this request's publish quickly, not hang it.
            return self.celery.send_task(name, args=[job_id], queue=queue, retry=False).id
        except Exception as e:
            log.warning("could not enqueue %s for %s (the reconciler will re-send it): %s", name, job_id, e)
            return None

    def revoke(self, task_id: str | None) -> None:
        """Best effort: a revoked message is dropped by the worker; a missed revoke is harmless because the
        worker's claim only succeeds from `queued` and the row is already `canceled`."""
        if not task_id:
            return
        try:
            self.celery.control.revoke(task_id)
        except Exception as e:
            log.warning("could not revoke task %s: %s", task_id, e)
