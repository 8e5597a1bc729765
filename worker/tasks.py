"""The Celery tasks: thin wrappers that hand a job id to its runner (the runners hold the logic).

Imported by the worker process only (celery_app's `include`): the runners import torch lazily, on the
first job, so the model and CUDA live in the worker's own process (the pool is one thread of it).
Each worker also runs, in daemon threads started when it is ready, the reconciler, the webhook sender
(webhooks/sender.py) and its own heartbeat with its GPU memory (worker/presence.py).
"""

from __future__ import annotations

import logging

from celery.signals import worker_ready, worker_shutting_down

from jobqueue.celery_app import app
from jobqueue.kinds import GENERATION, TRAINING
from webhooks import sender as webhook_sender
from worker import presence, reconciler
from worker.context import ctx

log = logging.getLogger(__name__)
_reconciler_stop = None
_background_stops: list = []  # the sender's and the beat's stop events


@app.task(name=TRAINING.task, ignore_result=True)
def train(job_id: str) -> str:
    from worker.training import run_training

    outcome = run_training(job_id)
    log.info("training %s: %s", job_id, outcome)
    return outcome


@app.task(name=GENERATION.task, ignore_result=True)
def generate(job_id: str) -> str:
    from worker.generation import run_generation

    outcome = run_generation(job_id)
    log.info("generation %s: %s", job_id, outcome)
    return outcome


@worker_ready.connect
def _start_reconciler(**_):
    global _reconciler_stop
    _reconciler_stop = reconciler.start_thread()


@worker_ready.connect
def _start_webhook_sender_and_beat(**_):
    c = ctx()
    _background_stops.append(webhook_sender.start_thread(c.sessions, c.settings))
    _background_stops.append(presence.start_thread(c))


@worker_ready.connect
def _warm_up_generation(sender=None, **_):
    """A worker that serves the generate queue loads the model and compiles the warm-up sizes now, in a
    thread (the task waits on the model's lock), so that no user request pays for them."""
    from worker.generation import start_warm_up

    start_warm_up(sender)


@worker_shutting_down.connect
def _stop_reconciler(**_):
    if _reconciler_stop is not None:
        _reconciler_stop.set()
    for stop in _background_stops:
        stop.set()
