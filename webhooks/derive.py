"""Which webhook events a job owes, read from its row: the row is the truth, so nothing in the job's own code
path has to remember to send anything, and an event missed by a crash is found on the next pass.

    start      the job started (started_at set)
    progress   a new step, at most every webhook_progress_interval_s
    preview    each training preview image, each finished generation image
    completed  the job ended: succeeded, failed or canceled (the last event; the job's scan ends with it)

Every event is recorded once (db.webhooks.record_delivery's unique (job, event, ref)); only the events in the
job's filter are recorded, but the scan ends at the end of the job whatever the filter.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from db.models import TERMINAL, utcnow
from db.webhooks import close_webhook_job, last_recorded_at, open_webhook_jobs, record_delivery, recorded_refs

EVENTS = ("start", "progress", "preview", "completed")


def _time(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t else None


def job_data(kind: str, job: Any) -> dict[str, Any]:
    """The job as the event's ``data``: what a client needs without a second request (the API's GET has more)."""
    base = "/v1/trainings" if kind == "training" else "/v1/generations"
    data: dict[str, Any] = {
        "id": job.id,
        "kind": kind,
        "status": job.status,
        "error": job.error,
        "url": f"{base}/{job.id}",
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
    }
    if kind == "training":
        data["progress"] = {
            "step": job.step,
            "total_steps": job.total_steps,
            "loss": job.loss,
            "eta_seconds": job.eta_seconds,
        }
        data["lora_id"] = job.lora.id if job.lora else None
        data["previews"] = [f"{base}/{job.id}/previews/{p.step}/{p.index}" for p in job.previews]
    else:
        data["progress"] = {"step": job.step, "total_steps": job.total_steps}
        data["images"] = [f"{base}/{job.id}/images/{i.index}" for i in job.images]
    return data


def body(kind: str, event: str, job: Any, extra: dict[str, Any] | None = None) -> str:
    """The JSON body, in the Standard Webhooks shape {type, timestamp, data}."""
    data = job_data(kind, job)
    data.update(extra or {})
    return json.dumps(
        {"type": f"{kind}.{event}", "timestamp": _time(utcnow()), "data": data},
        separators=(",", ":"),
        allow_nan=False,
        default=str,
    )


def _previews(kind: str, job: Any) -> list[tuple[str, dict[str, Any]]]:
    base = "/v1/trainings" if kind == "training" else "/v1/generations"
    if kind == "training":
        return [
            (
                f"{p.step}/{p.index}",
                {
                    "preview": {
                        "step": p.step,
                        "index": p.index,
                        "prompt": p.prompt,
                        "url": f"{base}/{job.id}/previews/{p.step}/{p.index}",
                    }
                },
            )
            for p in job.previews
        ]
    return [
        (
            str(i.index),
            {
                "image": {
                    "index": i.index,
                    "seed": i.seed,
                    "width": i.width,
                    "height": i.height,
                    "url": f"{base}/{job.id}/images/{i.index}",
                }
            },
        )
        for i in job.images
    ]


def derive_job(
    session: Session, kind: str, job: Any, *, progress_interval_s: float, now: datetime | None = None
) -> list[str]:
    """Record the events this job owes now; the events recorded (their names)."""
    now = now or utcnow()
    wanted = set(job.webhook_events or EVENTS)
    done: list[str] = []

    def record(event: str, ref: str = "", extra: dict[str, Any] | None = None, close: bool = False) -> None:
        if record_delivery(
            session,
            owner_id=job.owner_id,
            job_kind=kind,
            job_id=job.id,
            event=event,
            ref=ref,
            url=job.webhook_url,
            body=body(kind, event, job, extra),
            close_job=close,
        ):
            done.append(event)

    if "start" in wanted and job.started_at is not None:
        record("start")
    if "progress" in wanted and job.status == "running" and job.step > 0:
        last = last_recorded_at(session, job_id=job.id, event="progress")
        if (last is None or now - last >= timedelta(seconds=progress_interval_s)) and str(
            job.step
        ) not in recorded_refs(session, job_id=job.id, event="progress"):
            record("progress", str(job.step))
    if "preview" in wanted:
        seen = recorded_refs(session, job_id=job.id, event="preview")
        for ref, extra in _previews(kind, job):
            if ref not in seen:
                record("preview", ref, extra)
    if job.status in TERMINAL:
        if "completed" in wanted:
            record("completed", close=True)
        else:
            close_webhook_job(session, job_kind=kind, job_id=job.id)
    return done


def derive_all(session: Session, *, progress_interval_s: float) -> int:
    """One pass over every job that may still owe an event; how many events were recorded."""
    count = 0
    for kind in ("training", "generation"):
        for job in open_webhook_jobs(session, kind=kind):
            count += len(derive_job(session, kind, job, progress_interval_s=progress_interval_s))
    return count
