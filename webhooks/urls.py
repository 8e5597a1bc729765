"""Which webhook URLs may be called: http(s) to a host whose every address is public.

Checked when a job is submitted (a 422 naming the field) and again before every attempt, because a name may
resolve differently later (DNS rebinding): the sender then connects to the very address it checked
(webhooks/http.py). Loopback, private, link-local, shared, multicast and reserved addresses are refused
unless the service allows private receivers (O1LORA_WEBHOOK_ALLOW_PRIVATE=1: tests, a private network).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2000


class WebhookUrlError(ValueError):
    pass


def check_syntax(url: str) -> None:
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlError(f"must be at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise WebhookUrlError(f"is not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookUrlError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise WebhookUrlError("must name a host")
    if port == 0:
        raise WebhookUrlError("must not use port 0")
    if any(c.isspace() for c in url):
        raise WebhookUrlError("must not contain whitespace")


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise WebhookUrlError(f"host {host!r} does not resolve ({e})") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def refused_reason(address: str) -> str | None:
    """Why a receiver at ``address`` is refused, or None when it is a public address."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for what, flag in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return what
    return None if ip.is_global else "non-public"


def check_url(url: str, *, allow_private: bool) -> list[str]:
    """The addresses the URL's host resolves to, all allowed; WebhookUrlError saying why not otherwise."""
    check_syntax(url)
    parts = urlsplit(url)
    addresses = resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    if not allow_private:
        for address in addresses:
            reason = refused_reason(address)
            if reason:
                raise WebhookUrlError(
                    f"host {parts.hostname!r} resolves to a {reason} address ({address}); "
                    "webhooks go to public addresses only"
                )
    return addresses
