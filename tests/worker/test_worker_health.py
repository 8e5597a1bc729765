"""The worker container's health check against the real services, and against unreachable ones."""

from __future__ import annotations

from worker_helpers import TEST_BROKER

from ops.health import check
from service.settings import Settings


def test_healthy_when_broker_and_database_answer(pg_url):
    assert check(Settings(database_url=pg_url, broker_url=TEST_BROKER)) == []


def test_names_each_dependency_that_does_not_answer(pg_url):
    problems = check(
        Settings(
            database_url="postgresql+psycopg://postgres@127.0.0.1:1/nope",
            broker_url="redis://:secret@127.0.0.1:1/0",
        )
    )
    assert [p.split(":")[0] for p in problems] == ["broker", "database"]
    assert "secret" not in " ".join(problems)  # no credentials in container logs


def test_the_old_module_path_still_runs_the_check():
    """`python -m worker.health` (the path deployed compose files name) runs ops.health: exit 1 and the reason
    when the broker does not answer."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "O1LORA_BROKER_URL": "redis://127.0.0.1:1/0",
        "O1LORA_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/nope",
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker.health"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "broker" in done.stderr and "database" in done.stderr
