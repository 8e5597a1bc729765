"""Webhooks and /metrics with the real processes: a training and a generation run by a real Celery worker,
whose sender thread delivers their events to a loopback receiver that fails twice per delivery and checks
every signature; then /metrics reports those jobs, their times and the refused attempts, read by the API
from the database the worker wrote."""

from __future__ import annotations

import pytest
from e2e_helpers import dataset_files
from prometheus_client.parser import text_string_to_metric_families

from webhooks.receiver import Receiver


@pytest.fixture(scope="module")
def service_env():
    return {
        "O1LORA_WEBHOOK_ALLOW_PRIVATE": "1",
        "O1LORA_WEBHOOK_RETRY_SCHEDULE_S": "0.2,0.2,0.2",
        "O1LORA_WEBHOOK_POLL_S": "0.2",
        "O1LORA_WEBHOOK_PROGRESS_INTERVAL_S": "0",
    }


def settled(svc, path: str, timeout: float = 60.0) -> dict:
    """The job once it ended and every delivery of it was answered (delivered or given up)."""
    return svc.poll(
        path,
        lambda b: (
            b["status"] in ("succeeded", "failed", "canceled")
            and b["webhook"]
            and b["webhook"]["deliveries_total"] > 0
            and all(d["status"] != "pending" for d in b["webhook"]["deliveries"])
        ),
        timeout=timeout,
    )


def samples(text: str) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_webhooks_from_a_real_worker_then_metrics(service):
    svc = service
    secret = svc.http.get("/v1/webhooks/default/secret").raise_for_status().json()["key"]
    receiver = Receiver(secret, fail_first=2).start()
    try:
        r = svc.http.post("/v1/datasets", files=dataset_files(), data={"name": "sq", "resolution": "64"})
        assert r.status_code == 201, r.text
        job = svc.http.post(
            "/v1/trainings",
            json={
                "dataset_id": r.json()["id"],
                "trigger": "sks",
                "rank": 4,
                "resolution": 64,
                "steps": 4,
                "sample_every": 2,
                "sample_prompts": ["sks, a red square"],
                "webhook_url": receiver.url,
            },
        ).json()
        gen = svc.http.post(
            "/v1/generations",
            json={
                "prompt": "a red square",
                "width": 64,
                "height": 32,
                "steps": 2,
                "seed": 1,
                "num_images": 2,
                "webhook_url": receiver.url,
                "webhook_events_filter": ["completed"],
            },
        ).json()
        training = settled(svc, f"/v1/trainings/{job['id']}", timeout=240)
        generation = settled(svc, f"/v1/generations/{gen['id']}")
    finally:
        receiver.stop()
    assert training["status"] == "succeeded", training["error"]
    assert generation["status"] == "succeeded", generation["error"]
    assert receiver.rejected == []
    types = receiver.events()
    assert types.count("training.start") == 1 and types.count("training.completed") == 1
    assert types.count("training.preview") == len(training["previews"]) >= 2
    # Progress events depend on when the sender looked (tests/webhooks has the deterministic ones): every one
    # recorded was accepted once.
    progress = [d for d in training["webhook"]["deliveries"] if d["event"] == "progress"]
    assert types.count("training.progress") == len(progress)
    assert [t for t in types if t.startswith("generation.")] == ["generation.completed"]  # the filter
    assert set(receiver.attempts.values()) == {3}  # each delivery: two refusals, then accepted once
    for body in (training, generation):
        assert all(
            d["status"] == "delivered" and d["attempts"] == 3 and d["last_status_code"] == 200
            for d in body["webhook"]["deliveries"]
        )
    done = next(b for b in receiver.accepted.values() if b["type"] == "training.completed")["data"]
    assert done["status"] == "succeeded" and done["lora_id"] == training["lora_id"]

    m = samples(svc.http.get("/metrics").raise_for_status().text)
    assert m[("o1lora_jobs", (("kind", "training"), ("queue", "train"), ("status", "succeeded")))] == 1
    assert m[("o1lora_jobs", (("kind", "generation"), ("queue", "generate"), ("status", "succeeded")))] == 1
    for kind, queue in (("training", "train"), ("generation", "generate")):
        assert m[("o1lora_job_queue_wait_seconds_count", (("kind", kind), ("queue", queue)))] == 1
        run = m[("o1lora_job_run_seconds_sum", (("kind", kind), ("queue", queue), ("status", "succeeded")))]
        assert run > 0
    assert m[("o1lora_training_seconds_per_step_count", ())] == 1
    assert m[("o1lora_training_seconds_per_step_sum", ())] == pytest.approx(
        training["progress"]["seconds_per_step"]
    )
    assert m[("o1lora_generation_seconds_per_image_count", ())] == 1
    assert m[("o1lora_generation_seconds_per_image_sum", ())] > 0
    deliveries = len(receiver.accepted)
    failures = sum(v for (name, _), v in m.items() if name == "o1lora_webhook_delivery_failures_total")
    assert failures == 2 * deliveries
    assert m[("o1lora_workers", ())] == 1
    workers = {dict(labels)["worker"] for (name, labels) in m if name == "o1lora_worker_gpu_memory_bytes"}
    assert len(workers) == 1  # the one worker's beat (0 bytes on this CPU-only machine)
