"""Worker test fixtures: the real local Redis (under a key prefix of this test run) and a throwaway PostgreSQL.

The broker settings go into the environment at import, before worker.celery_app builds its app, so the app
and any worker process started from here use the same Redis database and prefix. A missing server fails
the tests that need it; nothing skips.
"""
from __future__ import annotations

import importlib
import os
import sys

import pytest

from worker_helpers import RUN_PREFIX, TEST_BROKER

os.environ["O1LORA_BROKER_URL"] = TEST_BROKER
os.environ["O1LORA_BROKER_KEY_PREFIX"] = RUN_PREFIX

from api.settings import Settings, get_settings  # noqa: E402

get_settings.cache_clear()
if "worker.celery_app" in sys.modules:
    # Another test package imported the app first, with its own broker settings: rebuild it (and the
    # module that sends through it) on ours. reload keeps each module object, so importers see the change.
    importlib.reload(sys.modules["worker.celery_app"])
    if "worker.dispatch" in sys.modules:
        importlib.reload(sys.modules["worker.dispatch"])


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

