"""Server-Sent Events for one job: the current DB state first, then the worker's live events from Redis,
until the job is terminal.

Subscribing happens BEFORE the DB read, so no event between the two is lost. Redis events are hints: every
``recheck_s`` without one the DB is read again (a lost or never-published event, or Redis down altogether,
only delays the stream), and the stream always ends with a final ``snapshot`` read from the DB.

Events: ``snapshot`` (the full public job), then ``progress`` / ``preview`` / ``validation`` / ``image`` /
``status`` as the worker publishes them (payloads in service/events.py), and ``: keepalive`` comments.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, AsyncIterator, Callable

import anyio
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError

from api.deps import close_quietly
from api.errors import is_disconnect
from db.models import TERMINAL
from service.events import channel, decode

log = logging.getLogger(__name__)
SNAPSHOT_TRIES = 3
UNAVAILABLE = (
    "event: error\ndata: "
    + json.dumps(
        {
            "error": {
                "code": "unavailable",
                "message": "the database is unavailable; reconnect to the stream shortly",
            }
        }
    )
    + "\n\n"
)


def format_event(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


async def job_events(
    *, kind: str, job_id: str, redis_url: str, snapshot: Callable[[], dict[str, Any]], recheck_s: float
) -> AsyncIterator[str]:
    """``snapshot()`` reads the job's public dict from the DB (sync; run in a thread)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        try:
            await pubsub.subscribe(channel(kind, job_id))
            live = True
        except Exception as e:  # no Redis: the stream still works, from DB reads alone
            log.warning("SSE for %s %s without live events: %s", kind, job_id, e)
            live = False
        try:
            state = await run_in_threadpool(snapshot)
        except DBAPIError:
            yield UNAVAILABLE
            return
        yield format_event("snapshot", state)
        while state["status"] not in TERMINAL:
            message = None
            if live:
                try:
                    message = await pubsub.get_message(timeout=recheck_s)
                except Exception as e:
                    log.warning("SSE lost Redis for %s %s: %s", kind, job_id, e)
                    live = False
            else:
                await anyio.sleep(recheck_s)
            if message is not None:
                try:
                    event = decode(message["data"])
                except ValueError:
                    continue
                yield format_event(event["type"], event["data"])
                if event["type"] != "status":
                    continue
            # After a status event, or recheck_s of quiet: the DB says what changed and whether the job ended.
            try:
                fresh = await run_in_threadpool(snapshot)
            except DBAPIError:
                # The response started long ago: say why the stream ends (same body as a 503) rather than cut it.
                yield UNAVAILABLE
                return
            if fresh != state or fresh["status"] in TERMINAL:
                yield format_event("snapshot", fresh)
            elif message is None:
                yield ": keepalive\n\n"
            state = fresh
    finally:
        try:
            await pubsub.aclose()
            await client.aclose()
        except Exception:
            pass


def job_stream(
    *, kind: str, job_id: str, settings, sessions, read: Callable[[Any], BaseModel]
) -> StreamingResponse:
    """The /events response of one job; ``read(session)`` is its public model, read in a fresh session for every
    snapshot (the request's own session is gone once the response streams)."""

    def snapshot() -> dict[str, Any]:
        # A dropped database connection is retried on a fresh one (the pool replaces it): a stream outlives blips.
        for attempt in range(SNAPSHOT_TRIES):
            session = sessions()
            try:
                return read(session).model_dump(mode="json")
            except DBAPIError as e:
                if not is_disconnect(e) or attempt == SNAPSHOT_TRIES - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
            finally:
                close_quietly(session)

    events = job_events(
        kind=kind,
        job_id=job_id,
        redis_url=settings.resolved_redis_url,
        snapshot=snapshot,
        recheck_s=settings.sse_recheck_s,
    )
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
