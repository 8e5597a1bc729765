"""Standard Webhooks signatures: ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``.

The owner's secret reads ``whsec_<base64>``; the HMAC key is the base64-decoded part after the prefix. A
receiver recomputes the signature with the same secret (``verify``) and drops repeats of a webhook-id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

PREFIX = "whsec_"
TOLERANCE_S = 5 * 60  # a receiver refuses timestamps further off than this (replays)


class SignatureError(ValueError):
    pass


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def key_of(secret: str) -> bytes:
    if not secret.startswith(PREFIX):
        raise SignatureError(f"a webhook secret starts with {PREFIX!r}")
    return base64.b64decode(secret[len(PREFIX) :], validate=True)


def sign(secret: str, msg_id: str, timestamp: int, body: str | bytes) -> str:
    body_bytes = body.encode() if isinstance(body, str) else body
    mac = hmac.new(key_of(secret), f"{msg_id}.{timestamp}.".encode() + body_bytes, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secret: str, msg_id: str, body: str, now: float | None = None) -> dict[str, str]:
    """The three headers of one attempt (the timestamp is the attempt's: a retry is signed afresh)."""
    timestamp = int(now if now is not None else time.time())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def verify(secret: str, header_values: dict[str, str], body: str | bytes, now: float | None = None) -> None:
    """What a receiver does: raise SignatureError unless one of the v1 signatures matches and the timestamp is
    recent. ``header_values`` keys are lower-case."""
    try:
        msg_id, timestamp = header_values["webhook-id"], int(header_values["webhook-timestamp"])
        given = header_values["webhook-signature"].split()
    except (KeyError, ValueError):
        raise SignatureError("missing or malformed webhook-id / webhook-timestamp / webhook-signature") from None
    if abs((now if now is not None else time.time()) - timestamp) > TOLERANCE_S:
        raise SignatureError("webhook-timestamp is too far from now")
    expected = sign(secret, msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in given):
        raise SignatureError("no webhook-signature matches")
