"""Sending job messages, and seeing which jobs have one waiting in the broker. Torch-free (the API uses it).

    from worker.dispatch import enqueue
    enqueue(session, "training", job.id)      # after the row is committed
"""
from __future__ import annotations

import base64
import json
import logging
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.generations import mark_generation_enqueued
from db.models import Generation, TrainingJob
from db.training import mark_training_enqueued
from worker.celery_app import GENERATE_QUEUE, GENERATE_TASK, RESUME_PRIORITY, TRAIN_QUEUE, TRAIN_TASK, app

log = logging.getLogger(__name__)

Kind = Literal["training", "generation"]
TASKS = {"training": (TRAIN_TASK, TRAIN_QUEUE), "generation": (GENERATE_TASK, GENERATE_QUEUE)}


def enqueue(session: Session, kind: Kind, job_id: str) -> str:
    """Send the job's message, then stamp `enqueued_at` on the (still queued) row; returns the Celery task id.

    Send first: a worker may claim the job before the stamp, and the stamp is conditional on `queued`,
    so it is then simply skipped. A crash between the two leaves an unstamped queued row, which the
    reconciler sends again; a duplicate message is harmless (the task claims conditionally).

    A job that already ran (attempt > 0: handed back by a stopping worker, or its worker died) goes ahead
    of every job still waiting to start (celery_app.RESUME_PRIORITY): it holds a checkpoint and a user
    who has been watching it.
    """
    if kind not in TASKS:
        raise ValueError(f"unknown job kind {kind!r}; one of {sorted(TASKS)}")
    name, queue = TASKS[kind]
    model = TrainingJob if kind == "training" else Generation
    ran_before = (session.scalar(select(model.attempt).where(model.id == job_id)) or 0) > 0
    options = {"priority": RESUME_PRIORITY} if ran_before else {}
    task_id = app.send_task(name, args=[job_id], queue=queue, **options).id
    mark = mark_training_enqueued if kind == "training" else _mark_generation
    mark(session, job_id=job_id, celery_task_id=task_id)
    return task_id


def _mark_generation(session: Session, *, job_id: str, celery_task_id: str) -> bool:
    return mark_generation_enqueued(session, generation_id=job_id, celery_task_id=celery_task_id)


def waiting_job_ids(kind: Kind) -> set[str]:
    """Job ids that have a message waiting in the broker's queue (not yet taken by a worker).

    Reads kombu's Redis lists directly: one list per priority step, named through the channel so the
    priority naming stays kombu's. kombu's client adds the key prefix to the commands kombu uses, and
    LRANGE is not one of them, hence the explicit prefix.
    """
    name, queue = TASKS[kind]
    ids: set[str] = set()
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for pri in channel.priority_steps:
            key = channel.global_keyprefix + channel._q_for_pri(queue, pri)
            for raw in channel.client.lrange(key, 0, -1):
                job_id = _job_id_of(raw, name)
                if job_id:
                    ids.add(job_id)
    return ids


def _job_id_of(raw: bytes, task_name: str) -> str | None:
    try:
        message = json.loads(raw)
        if message.get("headers", {}).get("task") != task_name:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError) as e:
        log.warning("unreadable message in the %s queue: %s", task_name, e)
        return None
