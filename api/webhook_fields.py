"""The webhook side of the job routes: the URL's address check at submit time, and the job's `webhook` block."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import object_session

from api.errors import ApiError
from api.schemas import WebhookDeliveryPublic, WebhookPublic, WebhookRequest
from db.webhooks import deliveries_of
from service.settings import Settings
from webhooks.urls import WebhookUrlError, check_url


def check_webhook_url(body: WebhookRequest, settings: Settings) -> None:
    """422 naming webhook_url when it does not resolve or resolves to a non-public address (the sender checks
    again before every attempt). Runs in the request: a DNS lookup, never a connection to the receiver."""
    if body.webhook_url is None:
        return
    try:
        check_url(body.webhook_url, allow_private=settings.webhook_allow_private)
    except WebhookUrlError as e:
        raise ApiError(
            422, f"webhook_url: {e}", field="webhook_url", details=[{"field": "webhook_url", "message": str(e)}]
        ) from None


def webhook_block(job: Any) -> WebhookPublic | None:
    if not job.webhook_url:
        return None
    session = object_session(job)
    rows, total = deliveries_of(session, job_id=job.id) if session is not None else ([], 0)
    return WebhookPublic(
        url=job.webhook_url,
        events_filter=list(job.webhook_events or []),
        deliveries_total=total,
        deliveries=[
            WebhookDeliveryPublic(
                id=d.id,
                event=d.event,
                status=d.status,
                attempts=d.attempts,
                last_status_code=d.last_status_code,
                last_error=d.last_error,
                created_at=d.created_at,
                delivered_at=d.delivered_at,
            )
            for d in rows
        ],
    )
