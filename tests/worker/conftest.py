"""Worker test fixtures: the real local Redis (under a key prefix of this test run) and a throwaway PostgreSQL.

The broker settings go into the environment at import, before worker.celery_app builds its app, so the app
and any worker process started from here use the same Redis database and prefix. A missing server fails
the tests that need it; nothing skips.
"""
from __future__ import annotations

import os
import uuid

import pytest

RUN_PREFIX = f"o1lora-test-{uuid.uuid4().hex[:8]}:"
os.environ.setdefault("O1LORA_BROKER_URL", "redis://127.0.0.1:6379/11")
os.environ["O1LORA_BROKER_KEY_PREFIX"] = RUN_PREFIX

from api.settings import Settings, get_settings  # noqa: E402

get_settings.cache_clear()


@pytest.fixture
def pg_url():
    """A migrated PostgreSQL database of its own for each test (about 0.3 s)."""
    from db.migrate import upgrade
    from db.testing import temporary_postgres
    with temporary_postgres() as url:
        upgrade(url)
        yield url


@pytest.fixture
def worker_ctx(pg_url, tmp_path):
    """A WorkerContext on the test PostgreSQL, the run's Redis prefix and a fresh artifact folder."""
    from worker.celery_app import app
    from worker.context import WorkerContext
    settings = Settings(database_url=pg_url, data_dir=tmp_path / "data", heartbeat_timeout_s=3.0)
    assert app.conf.broker_transport_options["global_keyprefix"] == settings.broker_key_prefix == RUN_PREFIX, \
        "worker.celery_app was imported before the test broker settings were set"
    c = WorkerContext(settings)
    yield c
    if "sessions" in c.__dict__:
        c.sessions.kw["bind"].dispose()
    # Leave the shared Redis as found: drop this run's queues.
    for key in c.redis.scan_iter(match=f"{RUN_PREFIX}*"):
        c.redis.delete(key)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random HiDream-O1 checkpoint with its tokenizer (core.tiny), written once per session."""
    from core.tiny import write_tiny_checkpoint
    path = tmp_path_factory.mktemp("model") / "tiny"
    write_tiny_checkpoint(path)
    return path


def put_dataset(c, owner_id: str, n: int = 4, side: int = 256):
    """A small captioned dataset in the store (coloured squares on grey), and its row."""
    import io

    from PIL import Image, ImageDraw

    from db.datasets import create_dataset, new_dataset_id
    dataset_id = new_dataset_id()
    prefix = f"datasets/{dataset_id}"
    colours = ["red", "green", "blue", "yellow", "white", "black"]
    for i in range(n):
        img = Image.new("RGB", (side, side), (128, 128, 128))
        d = ImageDraw.Draw(img)
        o = 20 + 15 * i
        d.rectangle([o, o, o + side // 3, o + side // 3], fill=colours[i % len(colours)])
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        c.store.put_bytes(f"{prefix}/img_{i:03d}.png", buf.getvalue())
        c.store.put_bytes(f"{prefix}/img_{i:03d}.txt", f"a {colours[i % len(colours)]} square".encode())
    with c.sessions() as s:
        return create_dataset(s, dataset_id=dataset_id, owner_id=owner_id, name="squares", storage_prefix=prefix,
                              num_images=n, num_captions=n, total_bytes=0, report={})
