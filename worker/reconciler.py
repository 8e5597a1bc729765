"""The reconciler: makes the broker agree with the database, which is the truth about every job.

    python -m worker.reconciler            # a standalone loop (every worker also runs one in a thread)
    python -m worker.reconciler --once     # one pass, prints what it did

Each pass
- puts `running` jobs whose heartbeat stopped (their worker died: OOM, SIGKILL, a lost machine) back to
  `queued` and sends them again; the next claim resumes a training from its last checkpoint;
- sends again `queued` jobs whose message is not waiting in the broker and was sent (or never sent) longer
  than a heartbeat timeout ago: a message lost with Redis, or one taken by a worker that died before
  starting it.
Both are safe to repeat and to run from several processes: a transition only happens from the expected
state, and a duplicate message finds its job already claimed and does nothing. A short Redis lock still
keeps several workers' reconcilers from doing the same pass at the same moment.
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from db.models import utcnow
from jobqueue.enqueue import enqueue
from jobqueue.kinds import KINDS
from worker.context import WorkerContext, ctx
from worker.db_retry import first_line, is_transient
from worker.dispatch import waiting_job_ids

log = logging.getLogger(__name__)


@dataclass
class Pass:
    resumed: list[str] = field(default_factory=list)  # running with a dead heartbeat -> queued + sent
    resent: list[str] = field(default_factory=list)  # queued without a waiting message -> sent
    skipped: bool = False  # another process holds the lock


def reconcile_once(c: WorkerContext | None = None, now: datetime | None = None, use_lock: bool = True) -> Pass:
    c = c or ctx()
    now = now or utcnow()
    done = Pass()
    lock_key = f"{c.settings.broker_key_prefix}o1lora:reconciler-lock"
    hold_ms = max(int(c.settings.reconcile_interval_s * 1000 * 0.8), 1000)
    if use_lock and not c.redis.set(lock_key, c.worker_id, nx=True, px=hold_ms):
        done.skipped = True
        return done
    timeout = timedelta(seconds=c.settings.heartbeat_timeout_s)
    with c.sessions() as s:
        for kind, k in KINDS.items():
            for job in k.stale_running(s, stale_before=now - timeout):
                if k.requeue_stale(s, job_id=job.id, stale_before=now - timeout):
                    enqueue(s, kind, job.id)
                    done.resumed.append(job.id)
                    log.warning(
                        "%s %s: worker %s stopped beating at %s; re-queued for resume",
                        kind,
                        job.id,
                        job.worker_id,
                        job.heartbeat_at,
                    )
            waiting = waiting_job_ids(kind)
            for job in k.queued_unsent(s, sent_before=now - timeout):
                if job.id in waiting or job.id in done.resumed:
                    continue  # its message is in the queue, behind other jobs: nothing is lost
                enqueue(s, kind, job.id)
                done.resent.append(job.id)
                log.warning(
                    "%s %s: queued since %s with no message in the broker; sent again",
                    kind,
                    job.id,
                    job.enqueued_at or job.created_at,
                )
    return done


def run_forever(stop: threading.Event, c: WorkerContext | None = None) -> None:
    """A pass every reconcile_interval_s until `stop` is set; errors are logged and the loop goes on."""
    c = c or ctx()
    interval = c.settings.reconcile_interval_s
    while True:
        try:
            reconcile_once(c)
        except Exception as e:
            if is_transient(e):  # a database outage: one line per pass, not a traceback with its SQL
                log.warning(
                    "reconciler pass failed (database unreachable: %s); retrying in %.0f s",
                    first_line(e),
                    interval,
                )
            else:
                log.exception("reconciler pass failed; retrying in %.0f s", interval)
        if stop.wait(interval):
            return


def start_thread(c: WorkerContext | None = None) -> threading.Event | None:
    """Run the loop in a daemon thread of this process (the worker does this); returns its stop event."""
    c = c or ctx()
    if c.settings.reconcile_interval_s <= 0:
        return None
    stop = threading.Event()
    threading.Thread(target=run_forever, args=(stop, c), name="o1lora-reconciler", daemon=True).start()
    return stop


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m worker.reconciler", description=__doc__.splitlines()[0])
    ap.add_argument("--once", action="store_true", help="one pass, then exit")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.once:
        print(reconcile_once(use_lock=False))
    else:
        run_forever(threading.Event())
