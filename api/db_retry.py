"""Run a request once more when the database dropped its connection under it, if nothing can have been written.

A connection killed while a request used it (a database restart, ``pg_terminate_backend``, a proxy timeout)
fails that request's next statement; the error handler answers 503 and marks the request. When the request
never asked the database to COMMIT (every read, and a write whose transaction died before its commit: it was
rolled back), running it again on a fresh connection (the pool pre-pings and replaces dead ones) gives the
answer the client wanted, so this middleware swallows that 503 and does. A request that attempted a commit
keeps its 503 with ``Retry-After``: the commit may have happened, and only the client knows whether repeating
is safe. Uploads (multipart) are never re-run: they write files before their row and may be gigabytes.
"""

from __future__ import annotations

UNAVAILABLE_FLAG = "o1lora_db_unavailable"  # set in scope["state"] by api.errors' database handler
COMMIT_FLAG = "o1lora_db_commit_attempted"  # set in scope["state"] by api.deps.get_session's session
MAX_REPLAY_BYTES = 1 << 20  # a JSON job spec; larger bodies are not kept for a second run


class RetryOnDisconnect:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        if scope["type"] != "http" or headers.get(b"content-type", b"").startswith(b"multipart/"):
            return await self.app(scope, receive, send)
        received: list[dict] = []
        size, retry = 0, False
        first = {**scope, "state": dict(scope.get("state") or {})}

        async def recording_receive():
            nonlocal size
            message = await receive()
            size += len(message.get("body", b""))
            received.append(message)
            return message

        async def first_send(message):
            nonlocal retry
            state = first["state"]
            if (
                message["type"] == "http.response.start"
                and message["status"] == 503
                and state.pop(UNAVAILABLE_FLAG, False)
                and not state.get(COMMIT_FLAG)
                and size <= MAX_REPLAY_BYTES
            ):
                retry = True
            if not retry:
                await send(message)

        await self.app(first, recording_receive, first_send)
        if not retry:
            return

        async def replaying_receive():
            return received.pop(0) if received else await receive()

        await self.app({**scope, "state": dict(scope.get("state") or {})}, replaying_receive, send)
