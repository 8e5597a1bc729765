"""The webhook sender: a loop that records the events jobs owe (derive.py) and sends the due deliveries.

Every worker runs one in a daemon thread (worker/tasks.py starts it when the worker is ready), so the
embedded `make serve` delivers too, and a training that keeps the worker's one task slot busy for hours does
not hold its progress webhooks up. Several senders are safe: recording is once per event (unique row) and
each attempt is claimed (db.webhooks.claim_due). Also `python -m webhooks.sender` (a standalone loop).

Each attempt is signed afresh (same webhook-id and body, new timestamp). A failed attempt is retried after
the next delay of webhook_retry_schedule_s; when the schedule is spent the delivery is marked failed.
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from db.models import Owner, WebhookDelivery, utcnow
from db.session import make_sessionmaker
from db.webhooks import claim_due, ensure_webhook_secret, mark_attempt_failed, mark_delivered
from service.settings import Settings, get_settings
from webhooks.attempt import post
from webhooks.derive import derive_all
from webhooks.signing import headers, new_secret

log = logging.getLogger(__name__)
LEASE_MARGIN_S = 30.0  # a claimed attempt is another sender's to retry only this long after its timeout


@dataclass
class SendPass:
    recorded: int = 0
    delivered: int = 0
    failed_attempts: int = 0


def secret_of(session: Session, owner_id: str) -> str:
    owner = session.get(Owner, owner_id)
    return (
        owner.webhook_secret
        if owner and owner.webhook_secret
        else ensure_webhook_secret(session, owner_id=owner_id, new_secret=new_secret())
    )


def send_one(session: Session, settings: Settings, d: WebhookDelivery) -> bool:
    attempt = post(
        d.url,
        d.body,
        headers(secret_of(session, d.owner_id), d.id, d.body),
        allow_private=settings.webhook_allow_private,
        timeout_s=settings.webhook_timeout_s,
    )
    if attempt.ok:
        mark_delivered(session, delivery_id=d.id, status_code=attempt.status_code)
        return True
    delays = settings.webhook_retry_delays
    retry_at = utcnow() + timedelta(seconds=delays[d.attempts - 1]) if d.attempts <= len(delays) else None
    mark_attempt_failed(
        session, delivery_id=d.id, status_code=attempt.status_code, error=attempt.error or "", retry_at=retry_at
    )
    log.info(
        "webhook %s (%s %s) attempt %d failed: %s; %s",
        d.id,
        d.job_kind,
        d.event,
        d.attempts,
        attempt.error,
        f"retry at {retry_at:%H:%M:%S}" if retry_at else "given up",
    )
    return False


def run_pass(sessions: sessionmaker, settings: Settings) -> SendPass:
    result = SendPass()
    with sessions() as s:
        result.recorded = derive_all(s, progress_interval_s=settings.webhook_progress_interval_s)
        while batch := claim_due(s, lease_s=settings.webhook_timeout_s + LEASE_MARGIN_S):
            for d in batch:
                if send_one(s, settings, d):
                    result.delivered += 1
                else:
                    result.failed_attempts += 1
    return result


def loop(sessions: sessionmaker, settings: Settings, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            run_pass(sessions, settings)
        except Exception as e:  # noqa: BLE001 - a database blip must not end the sender; the rows wait
            log.warning("webhook pass failed: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        stop.wait(settings.webhook_poll_s)


def start_thread(sessions: sessionmaker, settings: Settings) -> threading.Event:
    stop = threading.Event()
    threading.Thread(target=loop, args=(sessions, settings, stop), name="webhook-sender", daemon=True).start()
    return stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m webhooks.sender", description=__doc__.splitlines()[0])
    ap.add_argument("--once", action="store_true", help="one pass, print what it did")
    args = ap.parse_args(argv)
    settings = get_settings()
    sessions = make_sessionmaker(settings.resolved_database_url)
    if args.once:
        print(run_pass(sessions, settings))
        return 0
    loop(sessions, settings, threading.Event())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
