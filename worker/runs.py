"""What every job run shares: taking ownership of the row, live events, and local copies of stored files.

A task's delivery may be a duplicate, a redelivery or a late one; `take` decides from the row alone:
- finished (succeeded / failed / canceled) or missing -> nothing to do;
- queued -> claim it (queued -> running, attempt + 1);
- running with a fresh heartbeat -> another worker has it: nothing to do;
- running with a stale heartbeat -> its worker died: take it over (a training resumes from its checkpoint).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Literal

from db import events
from db.generations import claim_generation, get_generation, take_over_stale_generation
from db.models import TERMINAL, Generation, TrainingJob, utcnow
from db.training import cancel_queued_on_request, claim_training, get_training, take_over_stale_training
from worker.context import WorkerContext
from worker.pacing import Heartbeat

log = logging.getLogger(__name__)

Kind = Literal["training", "generation"]
Outcome = Literal["claimed", "taken_over", "finished", "busy", "missing", "canceled"]


class JobLost(Exception):
    """This worker no longer owns the job (judged dead and replaced); stop without writing anything."""


class TimeLimitExceeded(Exception):
    pass


@dataclass
class Taken:
    outcome: Outcome
    job: TrainingJob | Generation | None = None

    @property
    def runs(self) -> bool:
        return self.outcome in ("claimed", "taken_over")


def take(c: WorkerContext, kind: Kind, job_id: str) -> Taken:
    """Own the job for this worker if (and only if) it should run here now; see the module docstring."""
    training = kind == "training"
    stale_before = utcnow() - timedelta(seconds=c.settings.heartbeat_timeout_s)
    with c.sessions() as s:
        job = get_training(s, job_id=job_id) if training else get_generation(s, generation_id=job_id)
        if job is None:
            log.warning("%s %s: no such row (deleted?); message dropped", kind, job_id)
            return Taken("missing")
        if job.status in TERMINAL:
            return Taken("finished", job)
        if job.status == "queued" and training and job.cancel_requested:
            # Canceled while its dead worker's job waited to be resumed: finish the cancel here.
            cancel_queued_on_request(s, job_id=job_id)
            publish(c, kind, job_id, "status", {"status": "canceled"})
            return Taken("canceled", job)
        key = {"job_id": job_id} if training else {"generation_id": job_id}
        if job.status == "queued":
            won = (claim_training if training else claim_generation)(s, **key, worker_id=c.worker_id)
            outcome: Outcome = "claimed"
        else:
            won = (take_over_stale_training if training else take_over_stale_generation)(
                s, **key, worker_id=c.worker_id, stale_before=stale_before)
            outcome = "taken_over"
        if not won:
            return Taken("busy", job)
        s.expire_all()
        job = get_training(s, job_id=job_id) if training else get_generation(s, generation_id=job_id)
    log.info("%s %s: %s by %s (attempt %d)", kind, job_id, outcome, c.worker_id, job.attempt)
    publish(c, kind, job_id, "status", {"status": "running", "attempt": job.attempt})
    return Taken(outcome, job)


def run_with_heartbeat(c: WorkerContext, kind: Kind, job_id: str, *, beat: Callable[[], bool],
                       fail: Callable[[Any, str], Any], body: Callable[[Heartbeat], str | None]) -> str | None:
    """Run ``body(heartbeat)`` for a job this worker owns, beating from a thread; what ``body`` returns, or
    "lost" when another worker took the job over (nothing written), or "failed" when it raised (``fail(session,
    error)`` records it on the row, and a status event goes out)."""
    try:
        with Heartbeat(beat, c.heartbeat_interval_s, lambda e: log.warning("heartbeat: %s", e)) as hb:
            return body(hb)
    except JobLost:
        log.warning("%s %s: taken over by another worker; stopped", kind, job_id)
        return "lost"
    except Exception as e:
        log.exception("%s %s failed", kind, job_id)
        with c.sessions() as s:
            fail(s, short_error(e))
        publish(c, kind, job_id, "status", {"status": "failed", "error": short_error(e)})
        return "failed"


def publish(c: WorkerContext, kind: Kind, job_id: str, type: str, data: dict[str, Any]) -> None:
    """A live event for the SSE stream; best effort (the row is the truth)."""
    events.publish(c.redis, kind=kind, job_id=job_id, type=type, data=data)


def local_file(c: WorkerContext, key: str) -> Path:
    """A local path holding a stored file: the store's own when it is local, else a cached download."""
    path = c.store.local_path(key)
    if path is not None:
        return path
    dest = c.settings.data_dir.resolve() / "cache" / key
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        with c.store.open(key) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        tmp.replace(dest)
    return dest


def local_dir(c: WorkerContext, prefix: str) -> Path:
    """A local folder holding every stored file under `prefix` (the store's own when it is local)."""
    dest = c.settings.data_dir.resolve() / "cache" / prefix
    return c.store.fetch_dir(prefix, dest)


def short_error(e: BaseException) -> str:
    """What a user reads in the job's `error`: the exception's type and message, bounded."""
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 2000 else text[:2000] + " ..."
