"""Run a read request once more when the database dropped its connection under it.

A connection killed while a request used it (a database restart, ``pg_terminate_backend``, a proxy timeout)
fails that request's next statement; the error handler answers 503 and marks the request. GET and HEAD write
nothing, so this middleware swallows that 503 and runs the request again on a fresh connection (the pool
pre-pings and replaces dead ones). Requests that may write answer the 503 with ``Retry-After``: the client,
which knows whether repeating them is safe, decides.
"""
from __future__ import annotations

SAFE_METHODS = ("GET", "HEAD")
UNAVAILABLE_FLAG = "o1lora_db_unavailable"  # set in scope["state"] by api.errors' database handler


class RetryReadsOnDisconnect:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in SAFE_METHODS:
            return await self.app(scope, receive, send)
        received: list[dict] = []
        retry = False
        first = {**scope, "state": dict(scope.get("state") or {})}

        async def recording_receive():
            message = await receive()
            received.append(message)
            return message

        async def first_send(message):
            nonlocal retry
            if (message["type"] == "http.response.start" and message["status"] == 503
                    and first["state"].pop(UNAVAILABLE_FLAG, False)):
                retry = True
            if not retry:
                await send(message)

        await self.app(first, recording_receive, first_send)
        if not retry:
            return

        async def replaying_receive():
            return received.pop(0) if received else await receive()

        await self.app({**scope, "state": dict(scope.get("state") or {})}, replaying_receive, send)
