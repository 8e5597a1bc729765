"""A worker started with docker-compose's command rides out a Redis loss quietly: the consumer reconnects and
takes the next job, and the log holds no traceback (with gossip on, Celery logged "Error on restarting
Gossip: AttributeError(... 'connection_errors')" and its traceback on every loss)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from worker_helpers import put_dataset

from db.owners import create_owner
from db.training import create_training, get_training
from ops.broker import EmbeddedRedis

REPO = Path(__file__).resolve().parents[2]


def compose_worker_command() -> list[str]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["worker-train"]["command"]


def wait_for(predicate, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}:\n{log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.2)


@pytest.mark.slow  # ~40 s: a worker start, a reconnect backoff and a job
def test_compose_worker_survives_a_redis_loss_without_a_traceback(worker_ctx, tiny_model, tmp_path):
    c = worker_ctx
    redis_dir = tmp_path / "redis"
    broker = EmbeddedRedis(redis_dir).start()
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "O1LORA_DATABASE_URL": c.settings.resolved_database_url,
        "O1LORA_BROKER_URL": broker.url,
        "O1LORA_REDIS_URL": broker.url,
        "O1LORA_DATA_DIR": str(c.settings.data_dir),
        "O1LORA_MODEL_PATH": str(tiny_model),
        "O1LORA_RECONCILE_INTERVAL_S": "0",
        "PYTHONPATH": str(REPO),
    }
    cmd = compose_worker_command()
    cmd[0:1] = [sys.executable, "-m", "celery"]  # the image's `celery`, from this venv
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    second = None
    try:
        text = lambda: log.read_text(errors="replace")  # noqa: E731
        wait_for(lambda: "ready." in text(), 90, "the worker did not start", log)
        broker.proc.kill()  # Redis lost, with no goodbye
        broker.proc.wait()
        wait_for(lambda: "Connection to broker lost" in text(), 30, "the loss went unnoticed", log)
        time.sleep(2)
        second = EmbeddedRedis(redis_dir, port=broker.port).start()
        wait_for(lambda: text().count("Connected to redis") >= 2, 60, "the worker did not reconnect", log)

        # And it works: a job sent after the loss is taken and runs.
        with c.sessions() as s:
            owner = create_owner(s, name="after-loss")
        ds = put_dataset(c, owner.id)
        with c.sessions() as s:
            job = create_training(
                s,
                owner_id=owner.id,
                dataset_id=ds.id,
                name="j",
                trigger="sks",
                total_steps=2,
                params={"rank": 4, "alpha": 4.0, "resolution": 64, "sample_every": 0},
            )
        from celery import Celery

        sender = Celery("sender", broker=second.url)
        sender.send_task("o1lora.train", args=[job.id], queue="train")

        def done() -> bool:
            with c.sessions() as s:
                return get_training(s, job_id=job.id).status in ("succeeded", "failed")

        wait_for(done, 120, "the job sent after the loss did not run", log)
        with c.sessions() as s:
            assert get_training(s, job_id=job.id).status == "succeeded"
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        for b in (second, broker):
            if b is not None:
                b.stop()
    output = log.read_text(errors="replace")
    assert "Traceback" not in output and "AttributeError" not in output, output[-4000:]
