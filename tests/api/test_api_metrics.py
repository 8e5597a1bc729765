"""/metrics reads the rows: a generation with known times lands in the right buckets, and a worker's beat
(the call every worker's presence thread makes) shows its GPU memory until it goes stale."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from db.generations import claim_generation, create_generation, finish_generation
from db.models import Generation, WorkerBeat, utcnow
from db.worker_beats import beat_worker

GiB = 2**30


def scrape(client) -> dict[tuple, float]:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def bucket(m, name: str, le: str, **labels) -> float:
    return m.get((f"{name}_bucket", tuple(sorted({**labels, "le": le}.items()))), 0.0)


def test_a_generation_is_counted_in_the_buckets_its_times_fall_in(client, alice, Session):
    before = scrape(client)
    with Session() as s:
        gen = create_generation(s, owner_id=alice["owner_id"], prompt="p", params={}, num_images=2, total_steps=2)
        assert claim_generation(s, job_id=gen.id, worker_id="w") and finish_generation(
            s, job_id=gen.id, worker_id="w"
        )
        t = utcnow() - timedelta(hours=1)  # waited 10 s, ran 60 s for two images: 30 s an image
        s.execute(
            update(Generation)
            .where(Generation.id == gen.id)
            .values(created_at=t, started_at=t + timedelta(seconds=10), finished_at=t + timedelta(seconds=70))
        )
        s.commit()
    after = scrape(client)
    per_image, wait, run = (
        "o1lora_generation_seconds_per_image",
        "o1lora_job_queue_wait_seconds",
        "o1lora_job_run_seconds",
    )
    labels = {"kind": "generation", "queue": "generate"}
    grew = lambda name, le, **kw: bucket(after, name, le, **kw) - bucket(before, name, le, **kw)  # noqa: E731
    assert (grew(per_image, "10.0"), grew(per_image, "30.0"), grew(per_image, "+Inf")) == (0, 1, 1)
    assert (grew(wait, "5.0", **labels), grew(wait, "15.0", **labels)) == (0, 1)
    assert (grew(run, "30.0", status="succeeded", **labels), grew(run, "60.0", status="succeeded", **labels)) == (
        0,
        1,
    )
    key = ("o1lora_jobs", (("kind", "generation"), ("queue", "generate"), ("status", "succeeded")))
    assert after[key] - before[key] == 1


def test_each_live_workers_gpu_memory_from_its_beat(client, Session, settings):
    with Session() as s:
        beat_worker(
            s,
            worker_id="gpu-host:41",
            gpu_count=2,
            gpu_allocated_bytes=5 * GiB,
            gpu_reserved_bytes=6 * GiB,
            gpu_total_bytes=2 * 80 * GiB,
        )
        beat_worker(
            s,
            worker_id="gpu-host:41",
            gpu_count=2,
            gpu_allocated_bytes=7 * GiB,  # the next beat wins
            gpu_reserved_bytes=8 * GiB,
            gpu_total_bytes=2 * 80 * GiB,
        )
    m = scrape(client)
    memory = {
        dict(k)["type"]: v
        for (name, k), v in m.items()
        if name == "o1lora_worker_gpu_memory_bytes" and dict(k)["worker"] == "gpu-host:41"
    }
    assert memory == {"allocated": 7 * GiB, "reserved": 8 * GiB, "total": 160 * GiB}
    workers = m[("o1lora_workers", ())]
    with Session() as s:  # silent for longer than the heartbeat timeout: no longer reported
        s.execute(
            update(WorkerBeat)
            .where(WorkerBeat.worker_id == "gpu-host:41")
            .values(heartbeat_at=utcnow() - timedelta(seconds=settings.heartbeat_timeout_s + 1))
        )
        s.commit()
    m = scrape(client)
    assert m[("o1lora_workers", ())] == workers - 1
    assert not any(dict(k).get("worker") == "gpu-host:41" for (_, k) in m)
