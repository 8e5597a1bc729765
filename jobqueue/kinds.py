"""The job kinds: for each, its Celery task name and queue, its table, and the db functions that move its row.

The one place these facts live: the API enqueues through it (jobqueue.enqueue), the Celery app routes by it
(jobqueue.celery_app), the worker registers its tasks under its names (worker.tasks), and the worker's
take/hand-back path and reconciler (worker.runs, worker.reconciler) treat both kinds alike through it.
Every row function here takes ``job_id=``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from db import generations, training
from db.models import Generation, TrainingJob

Kind = Literal["training", "generation"]


@dataclass(frozen=True)
class JobKind:
    name: Kind
    task: str  # the Celery task name the message is sent to (by name: the API never imports it)
    queue: str  # the broker queue: training and generation run on separate workers
    model: type  # the table; its row is the job's truth
    get: Callable[..., Any]  # (s, *, job_id, owner_id=None) -> row | None
    mark_enqueued: Callable[..., bool]  # (s, *, job_id, celery_task_id) -> stamped
    claim: Callable[..., bool]  # (s, *, job_id, worker_id) -> queued -> running, mine
    take_over_stale: Callable[..., bool]  # (s, *, job_id, worker_id, stale_before)
    stale_running: Callable[..., list]  # (s, *, stale_before) -> running rows whose heartbeat stopped
    requeue_stale: Callable[..., bool]  # (s, *, job_id, stale_before) -> running -> queued
    queued_unsent: Callable[..., list]  # (s, *, sent_before) -> queued rows that may have no message
    cancel: Callable[..., str | None]  # (s, *, job_id, owner_id) -> "canceled" | "cancel_requested" | None
    label: str  # how an error message names one ("training job", "generation")


TRAINING = JobKind(
    name="training",
    task="o1lora.train",
    queue="train",
    model=TrainingJob,
    get=training.get_training,
    mark_enqueued=training.mark_training_enqueued,
    claim=training.claim_training,
    take_over_stale=training.take_over_stale_training,
    stale_running=training.stale_running_trainings,
    requeue_stale=training.requeue_stale_training,
    queued_unsent=training.queued_unsent_trainings,
    cancel=training.cancel_training,
    label="training job",
)

GENERATION = JobKind(
    name="generation",
    task="o1lora.generate",
    queue="generate",
    model=Generation,
    get=generations.get_generation,
    mark_enqueued=generations.mark_generation_enqueued,
    claim=generations.claim_generation,
    take_over_stale=generations.take_over_stale_generation,
    stale_running=generations.stale_running_generations,
    requeue_stale=generations.requeue_stale_generation,
    queued_unsent=generations.queued_unsent_generations,
    cancel=generations.cancel_generation,
    label="generation",
)

KINDS: dict[str, JobKind] = {k.name: k for k in (TRAINING, GENERATION)}


def kind_of(name: str) -> JobKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown job kind {name!r}; one of {sorted(KINDS)}") from None
