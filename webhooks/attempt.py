"""One attempt of one delivery over HTTP: re-check the URL, connect to the address checked, no redirects.

For http:// the request goes to the checked IP itself (Host header kept), so a DNS answer that changed since
the check cannot send it elsewhere. For https:// the TLS certificate must match the URL's host, which a
rebound name pointing at an internal server cannot present.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from webhooks.urls import WebhookUrlError, check_url


@dataclass
class Attempt:
    ok: bool
    status_code: int | None = None
    error: str | None = None


def pinned(url: str, address: str) -> tuple[str, dict[str, str]]:
    """The http URL with its host replaced by ``address``, and the Host header naming the original."""
    parts = urlsplit(url)
    host = (
        f"[{address}]"
        if isinstance(ipaddress.ip_address(address.split("%")[0]), ipaddress.IPv6Address)
        else address
    )
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), {"host": parts.netloc}


def post(url: str, body: str, headers: dict[str, str], *, allow_private: bool, timeout_s: float) -> Attempt:
    try:
        addresses = check_url(url, allow_private=allow_private)
    except WebhookUrlError as e:
        return Attempt(False, error=f"webhook_url {e}")
    target, extra = pinned(url, addresses[0]) if urlsplit(url).scheme == "http" else (url, {})
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
            r = client.post(
                target, content=body.encode(), headers={**headers, **extra, "user-agent": "o1lora-webhooks"}
            )
    except httpx.HTTPError as e:
        return Attempt(False, error=f"{type(e).__name__}: {e}"[:500])
    if 200 <= r.status_code < 300:
        return Attempt(True, r.status_code)
    return Attempt(False, r.status_code, f"the receiver answered {r.status_code}")
