"""/v1/webhooks: the owner's signing secret (Standard Webhooks: `whsec_<base64>`)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentOwner, SessionDep
from api.errors import error_responses
from api.schemas import WebhookSecretPublic
from db.webhooks import ensure_webhook_secret
from webhooks.signing import new_secret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=error_responses(401, 422, 503))


@router.get("/default/secret", response_model=WebhookSecretPublic)
def read_secret(owner: CurrentOwner, session: SessionDep):
    """The secret every webhook of yours is signed with (made on first use, then always the same).

    Verify a delivery: base64-decode the part after `whsec_`, HMAC-SHA256 `webhook-id + "." + webhook-timestamp
    + "." + body` with it, and compare its base64 with the `v1,` signature of the `webhook-signature` header."""
    return WebhookSecretPublic(key=ensure_webhook_secret(session, owner_id=owner.id, new_secret=new_secret()))
