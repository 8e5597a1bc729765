"""API test fixtures: the app on a fresh real PostgreSQL database, a real Celery app on the local Redis,
a local artifact store in a temp folder, and two owners with keys.

Nothing is mocked: messages land in Redis (db 13, under a key prefix unique to the test session), rows in
PostgreSQL. A missing server fails the tests.
"""

from __future__ import annotations

import uuid

import pytest
import redis
from api_helpers import REDIS_URL, auth, make_celery, owner_headers, png
from fastapi.testclient import TestClient

from api.main import create_app
from db.migrate import upgrade
from db.testing import temporary_postgres
from jobqueue.enqueue import Enqueuer
from service.settings import Settings


@pytest.fixture(scope="session")
def pg_url():
    with temporary_postgres() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def key_prefix():
    prefix = f"o1lora-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    r = redis.Redis.from_url(REDIS_URL)
    for k in r.scan_iter(f"{prefix}*"):
        r.delete(k)


@pytest.fixture(scope="session")
def settings(pg_url, tmp_path_factory):
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        database_url=pg_url,
        broker_url=REDIS_URL,
        dataset_min_side=16,
        max_upload_file_bytes=200_000,
        max_upload_request_bytes=2_000_000,
        max_upload_files=20,
        max_zip_uncompressed_bytes=1_000_000,
        max_image_pixels=512 * 512,
        max_caption_bytes=1000,
        max_lora_bytes=1_000_000,
        sse_recheck_s=0.3,
        # The session's owners accumulate queued jobs (no worker runs here); the limits have their
        # own tests, on an app of their own (test_api_quota.py).
        max_active_generations=10_000,
        max_active_trainings=10_000,
        # The default model path is the bundled model, whose default preset would fill every training request
        # here; these tests check the recipe's own defaults, test_default_preset.py the default preset.
        training_preset="none",
        # Likewise its generation defaults (20 steps, CFG 2) would fill every generation request; these tests check
        # the presets' own, test_request_defaults.py the bundled model's.
        generation_sampling="preset",
    )


@pytest.fixture(scope="session")
def app(settings, key_prefix):
    return create_app(settings, enqueuer=Enqueuer(lambda: make_celery(REDIS_URL, key_prefix)))


@pytest.fixture(scope="session")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def make_client(settings, key_prefix):
    """make_client(**changes): a client of an app of its own whose settings differ from the session's by
    `changes` (same database and Redis); closed at the end of the module."""
    clients = []

    def make(**changes):
        app = create_app(
            settings.model_copy(update=changes), enqueuer=Enqueuer(lambda: make_celery(REDIS_URL, key_prefix))
        )
        clients.append(TestClient(app).__enter__())
        return clients[-1]

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture(scope="session")
def Session(app):
    return app.state.sessions


@pytest.fixture(scope="session")
def store(app):
    return app.state.store


@pytest.fixture(scope="session")
def alice(Session):
    return owner_headers(Session, "alice")


@pytest.fixture(scope="session")
def bob(Session):
    return owner_headers(Session, "bob")


@pytest.fixture
def dataset(client, alice):
    files = [
        ("files", ("a.png", png(), "image/png")),
        ("files", ("a.txt", b"a red box", "text/plain")),
        ("files", ("b.jpg", png(48, 64, fmt="JPEG"), "image/jpeg")),
    ]
    r = client.post("/v1/datasets", headers=auth(alice), files=files, data={"name": "boxes", "resolution": "64"})
    assert r.status_code == 201, r.text
    return r.json()
