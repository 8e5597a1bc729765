"""Which jobs have a message waiting in the broker (the reconciler's question). Sending is jobqueue.enqueue."""

from __future__ import annotations

import base64
import json
import logging

from jobqueue import celery_app
from jobqueue.kinds import kind_of

log = logging.getLogger(__name__)


def waiting_job_ids(kind: str) -> set[str]:
    """Job ids that have a message waiting in the broker's queue (not yet taken by a worker).

    Reads kombu's Redis lists directly: one list per priority step, named through the channel so the
    priority naming stays kombu's. kombu's client adds the key prefix to the commands kombu uses, and
    LRANGE is not one of them, hence the explicit prefix.
    """
    name, queue = kind_of(kind).task, kind_of(kind).queue
    ids: set[str] = set()
    with celery_app.app.connection_for_read() as conn:
        channel = conn.default_channel
        for pri in channel.priority_steps:
            key = channel.global_keyprefix + channel._q_for_pri(queue, pri)
            for raw in channel.client.lrange(key, 0, -1):
                job_id = _job_id_of(raw, name)
                if job_id:
                    ids.add(job_id)
    return ids


def _job_id_of(raw: bytes, task_name: str) -> str | None:
    try:
        message = json.loads(raw)
        if message.get("headers", {}).get("task") != task_name:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError) as e:
        log.warning("unreadable message in the %s queue: %s", task_name, e)
        return None
