"""GET /metrics in the Prometheus text format, every value read from the database at scrape time.

The API, the workers and the webhook senders are separate processes; counting in any one of them would show
only its own share. The rows hold every job's times, every delivery's attempts and every worker's beat, so
one scrape of any API replica reports the whole service. Histograms are rebuilt from the rows of jobs that
ran (they only grow while rows are kept, as Prometheus expects of a histogram), counted by the database: a
scrape reads one row per label set, whatever the number of jobs.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from api.errors import error_responses
from db.models import utcnow
from db.stats import (
    Histogram,
    generation_seconds_per_image,
    jobs_by_status,
    queue_wait,
    run_time,
    training_seconds_per_step,
    webhook_counts,
)
from db.worker_beats import live_workers
from jobqueue.kinds import KINDS

STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
DURATION_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 12 * 3600, 48 * 3600)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
IMAGE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


def observe(family: HistogramMetricFamily, labels: list[str], hist: Histogram | None, bounds: tuple) -> None:
    """Add one labelled histogram, counted by the database (db.stats.histograms), to ``family``."""
    at_most, count, total = (hist.at_most, hist.count, hist.total) if hist else ((0,) * len(bounds), 0, 0.0)
    buckets = [(str(float(b)), n) for b, n in zip(bounds, at_most)] + [("+Inf", count)]
    family.add_metric(labels, buckets, sum_value=total)


class DatabaseCollector:
    """A prometheus_client collector whose every collect() is one read of the database."""

    def __init__(self, sessions, settings):
        self.sessions, self.settings = sessions, settings

    def collect(self):
        with self.sessions() as s:
            yield from self._jobs(s)
            yield from self._speeds(s)
            yield from self._webhooks(s)
            yield from self._workers(s)

    def _jobs(self, s):
        jobs = GaugeMetricFamily(
            "o1lora_jobs", "jobs by kind, queue and status", labels=["kind", "queue", "status"]
        )
        wait = HistogramMetricFamily(
            "o1lora_job_queue_wait_seconds", "submit to first start, jobs that started", labels=["kind", "queue"]
        )
        run = HistogramMetricFamily(
            "o1lora_job_run_seconds", "first start to end, finished jobs", labels=["kind", "queue", "status"]
        )
        for name, kind in KINDS.items():
            counts = jobs_by_status(s, kind=name)
            for status in STATUSES:
                jobs.add_metric([name, kind.queue, status], counts.get(status, 0))
            observe(wait, [name, kind.queue], queue_wait(s, kind=name, bounds=DURATION_BUCKETS), DURATION_BUCKETS)
            runs = run_time(s, kind=name, bounds=DURATION_BUCKETS)
            for status in ("succeeded", "failed", "canceled"):
                observe(run, [name, kind.queue, status], runs.get(status), DURATION_BUCKETS)
        yield from (jobs, wait, run)

    def _speeds(self, s):
        step = HistogramMetricFamily(
            "o1lora_training_seconds_per_step",
            "wall time per optimizer step of succeeded trainings (the last rate each reported)",
            labels=[],
        )
        observe(step, [], training_seconds_per_step(s, bounds=STEP_BUCKETS), STEP_BUCKETS)
        image = HistogramMetricFamily(
            "o1lora_generation_seconds_per_image", "run time per image of succeeded generations", labels=[]
        )
        observe(image, [], generation_seconds_per_image(s, bounds=IMAGE_BUCKETS), IMAGE_BUCKETS)
        yield from (step, image)

    def _webhooks(self, s):
        deliveries = GaugeMetricFamily(
            "o1lora_webhook_deliveries", "webhook deliveries by event and status", labels=["event", "status"]
        )
        failures = CounterMetricFamily(
            "o1lora_webhook_delivery_failures",
            "failed webhook delivery attempts (a receiver that did not answer 2xx, or could not be reached)",
            labels=["event"],
        )
        failed_by_event: dict[str, int] = {}
        for event, status, count, failed in webhook_counts(s):
            deliveries.add_metric([event, status], count)
            failed_by_event[event] = failed_by_event.get(event, 0) + int(failed)
        for event in ("start", "progress", "preview", "completed"):
            failures.add_metric([event], failed_by_event.get(event, 0))
        yield from (deliveries, failures)

    def _workers(self, s):
        after = utcnow() - timedelta(seconds=self.settings.heartbeat_timeout_s)
        up = GaugeMetricFamily("o1lora_workers", "worker processes whose heartbeat is fresh")
        memory = GaugeMetricFamily(
            "o1lora_worker_gpu_memory_bytes",
            "GPU memory of each live worker, from its "
            "heartbeat (allocated: tensors; reserved: the caching allocator; total: the "
            "cards')",
            labels=["worker", "type"],
        )
        workers = live_workers(s, beat_after=after)
        up.add_metric([], len(workers))
        for w in workers:
            for kind, value in (
                ("allocated", w.gpu_allocated_bytes),
                ("reserved", w.gpu_reserved_bytes),
                ("total", w.gpu_total_bytes),
            ):
                memory.add_metric([w.worker_id, kind], value)
        yield from (up, memory)


router = APIRouter(tags=["service"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {}},
            "description": "Prometheus text exposition format",
        },
        **error_responses(503),
    },
)
def metrics(request: Request) -> Response:
    """Prometheus metrics of the whole service (jobs, durations, speeds, webhooks, workers' GPU memory), read
    from the database at each scrape. No API key: point Prometheus at it over a network you trust."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


def install_metrics(app, sessions, settings) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(sessions, settings))
    app.state.metrics_registry = registry
    app.include_router(router)
