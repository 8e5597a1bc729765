"""Request body size limits, enforced while the body arrives (Content-Length is checked first, but a chunked
upload has none, so the bytes are counted too). Over the limit -> 413 and the handler never runs."""

from __future__ import annotations

import json
from typing import Callable

from starlette.exceptions import HTTPException


class BodyTooLarge(HTTPException):
    # An HTTPException, so that FastAPI's body parsing passes it through as a 413 instead of a generic 400.
    def __init__(self, limit: int):
        super().__init__(413, f"request body is over the limit of {limit} bytes")


class BodySizeLimit:
    """Pure ASGI middleware; ``limit_for(method, path)`` gives the byte limit of a request."""

    def __init__(self, app, limit_for: Callable[[str, str], int]):
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["method"], scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _reject(send, limit)
        seen, started = 0, False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await _reject(send, limit)


async def _reject(send, limit: int) -> None:
    # The one error shape of api/errors.py (this answer is sent before any handler could run).
    body = json.dumps(
        {"error": {"code": "too_large", "message": f"request body is over the limit of {limit} bytes"}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
