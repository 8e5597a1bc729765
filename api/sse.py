"""Server-Sent Events for one job: the current DB state first, then the worker's live events from Redis,
until the job is terminal.

Subscribing happens BEFORE the DB read, so no event between the two is lost. Redis events are hints: every
``recheck_s`` without one the DB is read again (a lost or never-published event, or Redis down altogether,
only delays the stream), and the stream always ends with a final ``snapshot`` read from the DB.

Events: ``snapshot`` (the full public job), then ``progress`` / ``preview`` / ``image`` / ``status`` as the
worker publishes them (payloads in db/events.py), and ``: keepalive`` comments.
"""
from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, Callable

import anyio
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from db.events import channel, decode
from db.models import TERMINAL

log = logging.getLogger(__name__)


def format_event(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


async def job_events(*, kind: str, job_id: str, redis_url: str, snapshot: Callable[[], dict[str, Any]],
                     recheck_s: float) -> AsyncIterator[str]:
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
        state = await run_in_threadpool(snapshot)
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
            fresh = await run_in_threadpool(snapshot)
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


def job_stream(*, kind: str, job_id: str, settings, sessions, read: Callable[[Any], BaseModel]) -> StreamingResponse:
    """The /events response of one job; ``read(session)`` is its public model, read in a fresh session for every
    snapshot (the request's own session is gone once the response streams)."""
    def snapshot() -> dict[str, Any]:
        with sessions() as s:
            return read(s).model_dump(mode="json")

    events = job_events(kind=kind, job_id=job_id, redis_url=settings.resolved_redis_url, snapshot=snapshot,
                        recheck_s=settings.sse_recheck_s)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
