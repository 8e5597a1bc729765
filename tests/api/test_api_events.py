"""SSE: the current DB state first, then the worker's Redis events, ending when the job is terminal; without
events (or without Redis) the stream still follows the DB and ends.

    .venv/bin/python -m pytest tests/api/test_api_events.py -q
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from api_helpers import REDIS_URL, auth
from fastapi.testclient import TestClient

from api.main import create_app
from db.training import claim_training, fail_training, finish_training, record_progress
from service.events import publish

pytestmark = pytest.mark.timeout(60)


def read_events(response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def later(delay, fn):
    t = threading.Thread(target=lambda: (time.sleep(delay), fn()), daemon=True)
    t.start()
    return t


def test_snapshot_then_live_events_then_final_state(client, alice, dataset, Session):
    job = client.post(
        "/v1/trainings",
        headers=auth(alice),
        json={"dataset_id": dataset["id"], "trigger": "t", "steps": 4, "sample_every": 2},
    ).json()
    r = redis.Redis.from_url(REDIS_URL)

    def worker():
        with Session() as s:
            claim_training(s, job_id=job["id"], worker_id="w")
            publish(r, kind="training", job_id=job["id"], type="status", data={"status": "running"})
            for step in (1, 2):
                record_progress(
                    s,
                    job_id=job["id"],
                    worker_id="w",
                    step=step,
                    total_steps=4,
                    loss=0.1 * step,
                    seconds_per_step=1.0,
                    eta_seconds=4.0 - step,
                )
                publish(
                    r, kind="training", job_id=job["id"], type="progress", data={"step": step, "loss": 0.1 * step}
                )
            publish(
                r,
                kind="training",
                job_id=job["id"],
                type="preview",
                data={"step": 2, "index": 0, "url": f"/v1/trainings/{job['id']}/previews/2/0"},
            )
            lora_id = finish_training(
                s, job_id=job["id"], worker_id="w", peft_prefix=None, comfyui_key=None, rank=4, alpha=4.0
            )
            publish(
                r,
                kind="training",
                job_id=job["id"],
                type="status",
                data={"status": "succeeded", "lora_id": lora_id},
            )

    thread = later(0.5, worker)
    with client.stream("GET", f"/v1/trainings/{job['id']}/events", headers=auth(alice)) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = read_events(resp)
    thread.join()
    names = [n for n, _ in events]
    assert names[0] == "snapshot" and events[0][1]["status"] == "queued"
    live = [(n, d) for n, d in events if n != "snapshot"]
    assert live == [
        ("status", {"status": "running"}),
        ("progress", {"step": 1, "loss": 0.1}),
        ("progress", {"step": 2, "loss": 0.2}),
        ("preview", {"step": 2, "index": 0, "url": f"/v1/trainings/{job['id']}/previews/2/0"}),
        ("status", {"status": "succeeded", "lora_id": live[-1][1]["lora_id"]}),
    ]
    final = events[-1]
    assert final[0] == "snapshot" and final[1]["status"] == "succeeded" and final[1]["lora_id"]


def test_without_events_the_stream_follows_the_db_and_ends(client, alice, dataset, Session):
    job = client.post(
        "/v1/trainings", headers=auth(alice), json={"dataset_id": dataset["id"], "trigger": "t"}
    ).json()

    def silent_worker():
        with Session() as s:
            claim_training(s, job_id=job["id"], worker_id="w")
            time.sleep(0.5)
            fail_training(s, job_id=job["id"], worker_id="w", error="boom")

    thread = later(0.3, silent_worker)
    with client.stream("GET", f"/v1/trainings/{job['id']}/events", headers=auth(alice)) as resp:
        events = read_events(resp)
    thread.join()
    assert all(n == "snapshot" for n, _ in events)
    assert events[-1][1]["status"] == "failed" and events[-1][1]["error"] == "boom"


def test_finished_job_sends_one_snapshot_and_ends(client, alice, dataset):
    job = client.post(
        "/v1/trainings", headers=auth(alice), json={"dataset_id": dataset["id"], "trigger": "t"}
    ).json()
    client.post(f"/v1/trainings/{job['id']}/cancel", headers=auth(alice))
    with client.stream("GET", f"/v1/trainings/{job['id']}/events", headers=auth(alice)) as resp:
        events = read_events(resp)
    assert [(n, d["status"]) for n, d in events] == [("snapshot", "canceled")]


def test_redis_down_falls_back_to_the_db(settings, alice, Session, app):
    app = create_app(
        settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}), enqueuer=app.state.enqueuer
    )
    with TestClient(app) as c:
        gen = c.post("/v1/generations", headers=auth(alice), json={"prompt": "p", "steps": 2}).json()

        def worker():
            from db.generations import claim_generation, finish_generation

            with Session() as s:
                claim_generation(s, job_id=gen["id"], worker_id="g")
                finish_generation(s, job_id=gen["id"], worker_id="g")

        thread = later(0.3, worker)
        with c.stream("GET", f"/v1/generations/{gen['id']}/events", headers=auth(alice)) as resp:
            events = read_events(resp)
        thread.join()
    assert events[0][1]["status"] == "queued" and events[-1][1]["status"] == "succeeded"
