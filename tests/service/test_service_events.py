"""Live events go through the real local Redis: one channel per job, JSON payloads, publish never raises.

.venv/bin/python -m pytest tests/service/test_service_events.py -q
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from service.events import channel, decode, publish

REDIS_URL = "redis://127.0.0.1:6379/13"


def test_publish_reaches_a_subscriber_of_that_job_only():
    r = redis.Redis.from_url(REDIS_URL)
    job, other = uuid.uuid4().hex, uuid.uuid4().hex
    sub = r.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(channel("training", job))
    time.sleep(0.05)
    assert publish(r, kind="training", job_id=other, type="progress", data={"step": 9}) is True
    assert publish(r, kind="training", job_id=job, type="progress", data={"step": 3, "loss": 0.5}) is True
    msg = None
    for _ in range(50):
        msg = sub.get_message(timeout=0.1)
        if msg:
            break
    event = decode(msg["data"])
    assert (event["type"], event["job_id"], event["data"]) == ("progress", job, {"step": 3, "loss": 0.5})
    sub.close()


def test_publish_survives_a_dead_redis_and_rejects_unknown_types():
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    assert publish(dead, kind="generation", job_id="x", type="status", data={"status": "running"}) is False
    with pytest.raises(ValueError, match="unknown event type"):
        publish(dead, kind="training", job_id="x", type="bogus", data={})
    with pytest.raises(ValueError, match="unknown job kind"):
        channel("dataset", "x")
