"""Live job events over Redis pub/sub: the worker publishes, the API's SSE endpoint relays.

One channel per job: ``o1lora:events:<kind>:<job_id>`` with kind ``training`` or ``generation``.
Payload: JSON ``{"type": "progress"|"preview"|"validation"|"status"|"image", "job_id": ..., "data": {...},
"ts": <unix>}``
- progress: {"step", "total_steps", "loss", "seconds_per_step", "eta_seconds", "validation_loss"?}
- preview:  {"step", "index", "url"}       (training; url as the API serves it)
- validation: {"step", "loss", "baseline": bool, "summary": {"series", "baseline", "best_step", "best_loss",
              "evals_since_best", "seconds", "images"}}   (training; also in the next progress as validation_loss)
- image:    {"index", "url"}               (generation)
- status:   {"status", "error"?, "lora_id"?}  (sent after the DB row changed)
Events are hints: the DB row stays the truth, and losing Redis loses only liveness.

    import redis; r = redis.Redis.from_url(settings.resolved_redis_url)
    publish(r, kind="training", job_id=job.id, type="progress", data={...})
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

log = logging.getLogger(__name__)

Kind = Literal["training", "generation"]
EVENT_TYPES = frozenset({"progress", "preview", "status", "image", "validation"})


def channel(kind: Kind, job_id: str) -> str:
    if kind not in ("training", "generation"):
        raise ValueError(f"unknown job kind {kind!r}")
    return f"o1lora:events:{kind}:{job_id}"


def encode(*, job_id: str, type: str, data: dict[str, Any]) -> str:
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}; one of {sorted(EVENT_TYPES)}")
    return json.dumps({"type": type, "job_id": job_id, "data": data, "ts": time.time()})


def decode(raw: bytes | str) -> dict[str, Any]:
    event = json.loads(raw)
    if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
        raise ValueError(f"not an o1lora event: {raw!r}")
    return event


def publish(client, *, kind: Kind, job_id: str, type: str, data: dict[str, Any]) -> bool:
    """Publish one event with a sync redis client; never raises for Redis trouble (the job must go on)."""
    message = encode(job_id=job_id, type=type, data=data)
    try:
        client.publish(channel(kind, job_id), message)
        return True
    except Exception as e:  # redis.ConnectionError, timeouts...: live events are best effort
        log.warning("could not publish %s event for %s: %s", type, job_id, e)
        return False
