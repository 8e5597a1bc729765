"""Worker test fixtures: the real local Redis (under a key prefix of this test run) and a throwaway PostgreSQL.

jobqueue.celery_app's app (the one worker.celery_app names) is built on the test broker settings at import (the environment is put back
afterwards); worker processes started from here get the same settings passed explicitly. A missing server fails
the tests that need it; nothing skips.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
from worker_helpers import RUN_PREFIX, TEST_BROKER

from service.settings import Settings, get_settings  # noqa: E402

TEST_ENV = {"O1LORA_BROKER_URL": TEST_BROKER, "O1LORA_BROKER_KEY_PREFIX": RUN_PREFIX}


def _build_app_on_the_test_broker() -> None:
    """Build (or rebuild) jobqueue.celery_app's app from the test broker settings, then put the environment
    back, so that other test packages in the same session keep their own settings."""
    saved = {k: os.environ.get(k) for k in TEST_ENV}
    os.environ.update(TEST_ENV)
    get_settings.cache_clear()
    try:
        if "jobqueue.celery_app" in sys.modules:
            # reload keeps the module object, so modules that read `celery_app.app` see the new app
            # (jobqueue.enqueue and worker.dispatch do); the entry-point module re-exports it again.
            importlib.reload(sys.modules["jobqueue.celery_app"])
            if "worker.celery_app" in sys.modules:
                importlib.reload(sys.modules["worker.celery_app"])
        else:
            importlib.import_module("worker.celery_app")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


_build_app_on_the_test_broker()


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

    settings = Settings(
        database_url=pg_url,
        data_dir=tmp_path / "data",
        heartbeat_timeout_s=3.0,
        broker_url=TEST_BROKER,
        redis_url=TEST_BROKER,
        broker_key_prefix=RUN_PREFIX,
    )
    assert app.conf.broker_transport_options["global_keyprefix"] == settings.broker_key_prefix == RUN_PREFIX, (
        "worker.celery_app was imported before the test broker settings were set"
    )
    c = WorkerContext(settings)
    yield c
    c.close()
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


@pytest.fixture
def tctx(worker_ctx, tiny_model):
    """worker_ctx on the tiny model, writing progress at every report (the training tests' context; a module may
    define its own)."""
    from worker.context import WorkerContext

    settings = worker_ctx.settings.model_copy(update={"model_path": tiny_model, "progress_interval_s": 0.0})
    c = WorkerContext(settings)
    yield c
    c.close()
