"""End-to-end fixtures: the real service as separate processes (uvicorn API + Celery worker) on the local
PostgreSQL (a throwaway database) and Redis (database 12 under a key prefix of this run), a tiny model.

A missing server makes these tests fail, not skip. Short timeouts (heartbeat 4 s, reconciler every 1 s) make
crash recovery observable in seconds; the logic is the same as with the production values.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from ops.broker import free_port
from ops.launcher import Launcher, wait_http

REDIS = "redis://127.0.0.1:6379/12"


class Service:
    """The running processes, an authorised HTTP client, and a DB session factory for white-box checks."""

    def __init__(self, launcher: Launcher, base_url: str, key: str, sessions, store_root: Path):
        self.launcher, self.base_url, self.sessions, self.store_root = launcher, base_url, sessions, store_root
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def start_worker(self, name: str, queues: str = "train,generate", env: dict[str, str] | None = None) -> None:
        self.launcher.start_worker(name, queues, env)
        deadline = time.monotonic() + 60
        while "ready." not in self.launcher.log(name):
            if self.launcher.procs[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n{self.launcher.log(name)[-3000:]}")
            time.sleep(0.2)

    def poll(self, path: str, until, timeout: float = 120.0) -> dict:
        """GET `path` until `until(body)` holds; fails with the worker logs when it does not in time."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.http.get(path).raise_for_status().json()
            if until(body):
                return body
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}\n{self.launcher.log(n)[-4000:]}" for n in self.launcher.procs)
                raise AssertionError(f"timed out on {path}: {body}\n{logs}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def service_env() -> dict[str, str]:
    """More O1LORA_* values for this module's service (a test module overrides this fixture)."""
    return {}


@pytest.fixture(scope="module")
def first_worker_env() -> dict[str, str]:
    """O1LORA_* values of the first worker only (a module that runs workers as separate machines overrides it)."""
    return {}


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model_e2e, service_env, first_worker_env):
    """One service per test module (starting one costs ~10 s of the 2 cores); tests that kill workers
    leave a live one behind."""
    tmp_path = tmp_path_factory.mktemp("service")
    from db.migrate import upgrade
    from db.owners import create_api_key, create_owner
    from db.session import make_sessionmaker
    from db.testing import temporary_postgres

    with temporary_postgres() as db_url:
        upgrade(db_url)
        sessions = make_sessionmaker(db_url)
        with sessions() as s:
            key = create_api_key(s, owner_id=create_owner(s, name="e2e").id)
        env = {
            "O1LORA_DATABASE_URL": db_url,
            "O1LORA_BROKER_URL": REDIS,
            "O1LORA_REDIS_URL": REDIS,
            "O1LORA_BROKER_KEY_PREFIX": f"o1lora-e2e-{uuid.uuid4().hex[:8]}:",
            "O1LORA_DATA_DIR": str(tmp_path / "data"),
            "O1LORA_MODEL_PATH": str(tiny_model_e2e),
            "O1LORA_HEARTBEAT_TIMEOUT_S": "4",
            "O1LORA_RECONCILE_INTERVAL_S": "1",
            "O1LORA_PROGRESS_INTERVAL_S": "0.2",
            "O1LORA_SSE_RECHECK_S": "1",
            **service_env,
        }
        launcher = Launcher(env, log_dir=tmp_path / "logs")
        port = free_port()
        try:
            api = launcher.start_api(port=port)
            wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=api)
            svc = Service(launcher, f"http://127.0.0.1:{port}", key, sessions, tmp_path / "data" / "artifacts")
            svc.start_worker("w1", env=first_worker_env)
            yield svc
        finally:
            launcher.stop_all()
            sessions.kw["bind"].dispose()
            import redis

            r = redis.Redis.from_url(REDIS)
            for k in r.scan_iter(match=env["O1LORA_BROKER_KEY_PREFIX"] + "*"):
                r.delete(k)


@pytest.fixture(scope="session")
def tiny_model_e2e(tmp_path_factory):
    from core.tiny import write_tiny_checkpoint

    path = tmp_path_factory.mktemp("e2e-model") / "tiny"
    write_tiny_checkpoint(path)
    return path
