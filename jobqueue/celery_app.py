"""The Celery app. Every Celery setting is in the one block below, each with the reason for it.

    celery -A worker.celery_app worker -Q train            # a training worker (GPU)
    celery -A worker.celery_app worker -Q generate         # a generation worker (GPU, keeps the model resident)

Torch-free: the API imports this module (through jobqueue.enqueue) to send; only the worker imports
worker.tasks (and so torch). `celery -A worker.celery_app` names the same app.
"""

from __future__ import annotations

from celery import Celery, bootsteps
from kombu import Queue

from jobqueue.kinds import GENERATION, TRAINING
from service.settings import get_settings

# The API sends by name (jobqueue.enqueue): one spelling of each (task name, queue), in jobqueue.kinds.
TRAIN_TASK, TRAIN_QUEUE = TRAINING.task, TRAINING.queue
GENERATE_TASK, GENERATE_QUEUE = GENERATION.task, GENERATION.queue

# Message priorities. kombu's Redis transport keeps one list per priority step (0, 3, 6, 9) and a worker pops
# the list of step 0 first: on Redis a LOWER number goes first (the reverse of AMQP). A new job is sent at
# NEW_JOB_PRIORITY (by the routes below, so the API's send_task gets it without naming it); a job that already
# ran (handed back at a warm shutdown, or resumed after its worker died) at RESUME_PRIORITY
# (jobqueue.enqueue.enqueue), so it resumes before every job that is still waiting to start.
RESUME_PRIORITY, NEW_JOB_PRIORITY = 0, 6


# How often the worker's event loop wakes up with nothing to do (see PromptPickup).
PICKUP_TICK_S = 0.05


class PromptPickup(bootsteps.StartStopStep):
    """Wake the worker's event loop every PICKUP_TICK_S, so that the next job is taken at once when one ends.

    With worker_disable_prefetch the Redis transport stops listening (BRPOP) while the pool is busy and starts
    again on the event loop's next tick; with nothing scheduled, kombu's loop sleeps up to 1 s between ticks,
    and the pool thread finishing a task does not wake it. A job sent just after the previous one ended then
    waited up to 1 s in Redis: 0.85 s on average between a generation's POST and its start, measured through
    the API on an H200 (bench/RESULTS.md) and here. A no-op timer bounds that sleep; 20 wake-ups a second
    cost nothing measurable.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        self.tref = None
        super().__init__(c, **kwargs)

    def start(self, c):
        if c.hub is not None:  # the event loop (Redis); without one the consumer does not pause like this
            self.tref = c.hub.call_repeatedly(PICKUP_TICK_S, _no_op)

    def stop(self, c):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None


def _no_op() -> None:
    pass


def make_app() -> Celery:
    s = get_settings()
    app = Celery("o1lora", set_as_current=True)
    app.conf.update(
        broker_url=s.broker_url,
        # Retry the broker forever, also at start: compose starts Redis and the workers together, and a
        # Redis restart must not kill a worker that is in the middle of a 3-hour training.
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Ack EARLY (when the task starts), not late. Redis hands an unacked message to another worker
        # after `visibility_timeout`; with late acks a training longer than that would be started a second
        # time while the first still runs, and raising the timeout to "longer than any job" delays the
        # recovery of a message whose worker died by that much. With early acks the broker never
        # redelivers: a worker that dies mid-job leaves a `running` row whose heartbeat stops, and the
        # reconciler (worker/reconciler.py) resumes it from its last checkpoint within heartbeat_timeout_s.
        # tests/worker/test_worker_celery_delivery.py runs a job far longer than a 1 s visibility timeout
        # and checks that its message is acked while it runs and that it is executed once.
        task_acks_late=False,
        # The visibility timeout now only covers a message taken by a worker that dies before the ack (a
        # few ms); the reconciler re-sends such a job anyway. The key prefix lets deployments (and test
        # runs) share one Redis without seeing each other's queues.
        broker_transport_options={
            "visibility_timeout": s.broker_visibility_timeout_s,
            "global_keyprefix": s.broker_key_prefix,
        },
        # Take one message at a time: a worker busy with a long training must not hold the next job in
        # its reserve while another worker sits idle.
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        # Threads pool with one thread: the task runs inside the worker's own process, so CUDA is
        # initialised there (lazily, on the first task, never in a parent that then forks) and the
        # generation worker keeps its base model resident across tasks. Not the solo pool: with Redis,
        # Celery queues the ack on the worker's event loop, which the solo pool blocks for the whole task,
        # so an "early" ack would really happen at the end and a long job would be redelivered after the
        # visibility timeout (the delivery test catches exactly this). A pool thread leaves the loop free
        # to ack at once and to answer control commands (revoke, ping) during a training.
        worker_pool="threads",
        worker_concurrency=1,
        # Celery enforces task_time_limit only in the prefork pool; our limits are checked by the tasks
        # themselves (train_time_limit_s / generate_time_limit_s in should_stop and the sampler callback),
        # which also lets them record a clean `failed: time limit` instead of a killed process.
        task_time_limit=None,
        task_soft_time_limit=None,
        # Two queues so training and generation run on separate workers; routing by task name means
        # callers only name the task. A route's priority is a default: an explicit one (a resume) wins.
        task_queues=(Queue(TRAIN_QUEUE), Queue(GENERATE_QUEUE)),
        task_routes={
            TRAIN_TASK: {"queue": TRAIN_QUEUE, "priority": NEW_JOB_PRIORITY},
            GENERATE_TASK: {"queue": GENERATE_QUEUE, "priority": NEW_JOB_PRIORITY},
        },
        task_create_missing_queues=False,
        # No result backend: the job row is the one record of a job's outcome (the API reads only the DB).
        result_backend=None,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # JSON only: a task's only argument is a job id, and nothing from the broker is ever unpickled.
        task_serializer="json",
        accept_content=["json"],
        # Live events go through our own pub/sub channel (service.events); Celery's event stream is unused.
        worker_send_task_events=False,
        task_send_sent_event=False,
        # Leave the process's logging alone so our log lines keep their format.
        worker_hijack_root_logger=False,
        # The job modules, imported by the worker only (the API process never imports torch).
        include=["worker.tasks"],
    )
    app.steps["consumer"].add(PromptPickup)
    return app


app = make_app()
