"""What every job run shares: taking ownership of the row, live events, and local copies of stored files.

A task's delivery may be a duplicate, a redelivery or a late one; `take` decides from the row alone:
- finished (succeeded / failed / canceled) or missing -> nothing to do;
- queued -> claim it (queued -> running, attempt + 1);
- running with a fresh heartbeat -> another worker has it: nothing to do;
- running with a stale heartbeat -> its worker died: take it over (a training resumes from its checkpoint).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db import jobs
from db.models import TERMINAL, Generation, TrainingJob, utcnow
from db.training import cancel_queued_on_request
from jobqueue.enqueue import enqueue
from jobqueue.kinds import Kind, kind_of
from service import events
from worker.context import WorkerContext
from worker.db_retry import DatabaseOutage, first_line, is_transient, retrying
from worker.pacing import Heartbeat

log = logging.getLogger(__name__)

Outcome = Literal["claimed", "taken_over", "finished", "busy", "missing", "canceled", "handed_back"]
T = TypeVar("T")


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


def db_call(c: WorkerContext, fn: Callable[[Session], T], *, what: str, limit_s: float | None = None) -> T:
    """``fn(session)`` in a fresh session, retried through connection losses for ``limit_s`` (default
    db_outage_limit_s; worker.db_retry): the way every database read and write of a running job goes, so
    that a blip costs a pause, never the job. ``fn`` must be safe to run twice (the job functions of db/ are
    conditional UPDATEs and upserts)."""

    def once() -> T:
        with c.sessions() as s:
            return fn(s)

    return retrying(once, limit_s=c.settings.db_outage_limit_s if limit_s is None else limit_s, what=what)


def _row(s: Session, kind: Kind, job_id: str):
    return kind_of(kind).get(s, job_id=job_id)


def take(c: WorkerContext, kind: Kind, job_id: str) -> Taken:
    """Own the job for this worker if (and only if) it should run here now; see the module docstring."""
    training = kind == "training"
    stale_before = utcnow() - timedelta(seconds=c.settings.heartbeat_timeout_s)
    where = f"{kind} {job_id}: take"
    job = db_call(c, lambda s: _row(s, kind, job_id), what=where)
    if job is None:
        log.warning("%s %s: no such row (deleted?); message dropped", kind, job_id)
        return Taken("missing")
    if job.status in TERMINAL:
        return Taken("finished", job)
    if job.status == "queued" and training and job.cancel_requested:
        # Canceled while its dead worker's job waited to be resumed: finish the cancel here.
        db_call(c, lambda s: cancel_queued_on_request(s, job_id=job_id), what=where)
        publish(c, kind, job_id, "status", {"status": "canceled"})
        return Taken("canceled", job)
    if job.status == "queued":
        transition = kind_of(kind).claim
        extra: dict = {}
        outcome: Outcome = "claimed"
    else:
        transition = kind_of(kind).take_over_stale
        extra = {"stale_before": stale_before}
        outcome = "taken_over"
    tried = [False]

    def claim(s: Session) -> bool:
        if tried[0]:
            # A retry: the first try's COMMIT may have landed before its connection broke. The row then
            # already names this worker, and only this process writes this worker id.
            row = _row(s, kind, job_id)
            if row is not None and row.status == "running" and row.worker_id == c.worker_id:
                return True
        tried[0] = True
        return transition(s, job_id=job_id, worker_id=c.worker_id, **extra)

    if not db_call(c, claim, what=where):
        return Taken("busy", job)
    try:
        job = db_call(c, lambda s: _row(s, kind, job_id), what=where)
    except DatabaseOutage:
        # Claimed but unreadable: hand it straight back rather than leave it `running` with no one beating
        # for it until the heartbeat timeout (best effort: the database is likely still down).
        log.error("%s %s: claimed but the row could not be read back; handing it back", kind, job_id)
        hand_back(c, kind, job_id)
        return Taken("handed_back")
    log.info("%s %s: %s by %s (attempt %d)", kind, job_id, outcome, c.worker_id, job.attempt)
    publish(c, kind, job_id, "status", {"status": "running", "attempt": job.attempt})
    return Taken(outcome, job)


def hand_back(c: WorkerContext, kind: Kind, job_id: str) -> bool:
    """running (owned by this worker) -> queued, and its message sent again at once (a warm shutdown, or a
    claim this worker cannot go on with). False when the row was not ours to hand back, or could not be
    written (the reconciler then resumes it after the heartbeat timeout)."""
    model = kind_of(kind).model
    try:
        if not db_call(
            c,
            lambda s: jobs.hand_back(s, model, job_id=job_id, worker_id=c.worker_id),
            what=f"{kind} {job_id}: hand back",
        ):
            return False
    except DatabaseOutage:
        return False
    publish(c, kind, job_id, "status", {"status": "queued"})
    try:
        db_call(c, lambda s: enqueue(s, kind, job_id), what=f"{kind} {job_id}: send again")
    except Exception as e:  # a broker or database outage: the row is queued, the reconciler re-sends it
        log.warning("%s %s: handed back but not sent again (the reconciler will): %s", kind, job_id, e)
    return True


def run_with_heartbeat(
    c: WorkerContext,
    kind: Kind,
    job_id: str,
    *,
    beat: Callable[[], bool],
    fail: Callable[[Any, str], Any],
    body: Callable[[Heartbeat], str | None],
) -> str | None:
    """Run ``body(heartbeat)`` for a job this worker owns, beating from a thread; what ``body`` returns, or
    "lost" when another worker took the job over (nothing written), or "failed" when it raised (``fail(session,
    error)`` records it on the row, retried through a database outage, and a status event goes out)."""
    try:
        with Heartbeat(beat, c.heartbeat_interval_s, lambda e: log.warning("heartbeat: %s", first_line(e))) as hb:
            return body(hb)
    except JobLost:
        log.warning("%s %s: taken over by another worker; stopped", kind, job_id)
        return "lost"
    except Exception as e:
        log.exception("%s %s failed", kind, job_id)
        error = short_error(e)
        try:
            # The outcome waits for the database longer than a step does: up to the heartbeat timeout, after
            # which the row is the reconciler's to resume anyway.
            limit = max(c.settings.db_outage_limit_s, c.settings.heartbeat_timeout_s)
            db_call(c, lambda s: fail(s, error), what=f"{kind} {job_id}: record the failure", limit_s=limit)
        except DatabaseOutage:
            # Still down: the row stays `running`; once the database is back the reconciler resumes the job.
            log.error("%s %s: could not record the failure; left to the reconciler", kind, job_id)
            return "failed"
        publish(c, kind, job_id, "status", {"status": "failed", "error": error})
        return "failed"


def publish(c: WorkerContext, kind: Kind, job_id: str, type: str, data: dict[str, Any]) -> None:
    """A live event for the SSE stream; best effort (the row is the truth)."""
    events.publish(c.redis, kind=kind, job_id=job_id, type=type, data=data)


def local_file(c: WorkerContext, key: str) -> Path:
    """A local path holding a stored file: the store's own when it is local, else this machine's cached copy."""
    return c.store_cache.file(key)


def local_dir(c: WorkerContext, prefix: str) -> Path:
    """A local folder holding every stored file under `prefix` (the store's own when it is local)."""
    return c.store_cache.folder(prefix)


def short_error(e: BaseException) -> str:
    """What a user reads in the job's `error`: the exception's type and message, bounded. A database error
    says only that (its SQL, parameters and the worker's host:pid are in the log, not for the owner)."""
    if isinstance(e, DatabaseOutage):
        return str(e)
    if is_transient(e):  # a call that was not retried (db_call) lost its connection
        return (
            "stopped: the connection to the service's database was lost (a service problem, not one of this job)"
        )
    if isinstance(e, SQLAlchemyError):
        orig = getattr(e, "orig", None)
        return f"stopped by an internal database error ({type(orig or e).__name__}); the service's log has the details"
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 2000 else text[:2000] + " ..."
