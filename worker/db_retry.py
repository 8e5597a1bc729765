"""Retrying a worker's database calls through connection losses, so that a blip never fails a job.

A connection killed while a statement waits (a failover, `pg_terminate_backend`, a restarted pooler) raises
on that one call; the pool drops the dead connection and the next checkout opens a new one (pre-ping). So a
call made in a fresh session and retried with backoff survives a blip with the step's work kept. Only a
database that stays unreachable past `db_outage_limit_s` ends the job, with `DatabaseOutage`, whose text is
written for the job's owner (the driver's message, with its SQL, parameters and hosts, goes to the log).

Every call retried here must be safe to run twice: the job transitions are conditional UPDATEs and the
records are upserts. A call whose COMMIT was lost in flight is the one ambiguous case; the callers that
care (the claim, the final success) check the row on a retry.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_DELAY_S, MAX_DELAY_S = 0.2, 5.0


class DatabaseOutage(Exception):
    """The database stayed unreachable longer than the limit; the message is meant for the job's owner."""

    def __init__(self, limit_s: float):
        super().__init__(
            f"stopped: the service's database was unreachable for more than {limit_s:.0f} s "
            "(a service outage, not a problem with this job); it can be submitted again"
        )
        self.limit_s = limit_s


def is_transient(e: BaseException) -> bool:
    """A lost or refused connection (worth retrying), as opposed to a mistake that would fail again."""
    if isinstance(e, DisconnectionError):
        return True
    if isinstance(e, DBAPIError) and e.connection_invalidated:
        return True
    if isinstance(e, (OperationalError, InterfaceError)):
        # SQLite reports schema mistakes ("no such table") as OperationalError too: there only a busy file is
        # transient. For a server database OperationalError is the driver's "connection / server state" class.
        orig = getattr(e, "orig", None)
        if orig is not None and type(orig).__module__.startswith("sqlite3"):
            text = str(orig).lower()
            return "locked" in text or "busy" in text or "unable to open" in text
        return True
    return False


def first_line(e: BaseException) -> str:
    """The driver's message without SQLAlchemy's appended statement and parameters (for log lines)."""
    orig = getattr(e, "orig", None) or e
    return f"{type(orig).__name__}: {str(orig).strip().splitlines()[0] if str(orig).strip() else ''}"


def retrying(
    call: Callable[[], T],
    *,
    limit_s: float,
    what: str,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, again after each transient database error with growing pauses (0.2 s doubling up to 5 s),
    until it returns or the errors have lasted ``limit_s``: then DatabaseOutage. Other errors pass through."""
    start = clock()
    delay = FIRST_DELAY_S
    tries = 0
    while True:
        try:
            result = call()
            if tries:
                log.warning("%s: database reachable again after %d retries (%.1f s)", what, tries, clock() - start)
            return result
        except Exception as e:
            if not is_transient(e):
                raise
            waited = clock() - start
            if waited >= limit_s:
                log.error(
                    "%s: database unreachable for %.0f s (limit %.0f s), giving up: %s",
                    what,
                    waited,
                    limit_s,
                    first_line(e),
                )
                raise DatabaseOutage(limit_s) from e
            tries += 1
            log.warning("%s: database error, retry %d in %.1f s: %s", what, tries, delay, first_line(e))
            sleep(min(delay, max(limit_s - waited, 0.01)))
            delay = min(delay * 2, MAX_DELAY_S)
