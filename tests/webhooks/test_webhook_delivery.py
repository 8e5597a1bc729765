"""Deliveries against a real local receiver: the job rows move through the same db functions a worker calls,
and the sender's passes (what every worker's sender thread runs) record and send the events.

On SQLite and on the real local PostgreSQL server (a throwaway database); the receiver is a real HTTP server on loopback
that recomputes every signature with the owner's secret (so O1LORA_WEBHOOK_ALLOW_PRIVATE is on here).
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest

from db.generations import (
    add_generation_image,
    claim_generation,
    create_generation,
    finish_generation,
    record_generation_progress,
)
from db.migrate import upgrade
from db.models import WebhookDelivery
from db.owners import create_owner
from db.session import make_sessionmaker
from db.stats import webhook_counts
from db.testing import temporary_postgres
from db.training import add_preview, claim_training, create_training, finish_training, record_progress
from db.webhooks import ensure_webhook_secret
from service.settings import Settings
from webhooks.receiver import Receiver
from webhooks.sender import run_pass
from webhooks.signing import new_secret

ALL = ["start", "progress", "preview", "completed"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def Session(request, tmp_path_factory):
    """SQLite is the embedded default's database (`make serve`), PostgreSQL the deployed one's."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('hooks') / 'o1lora.db'}"
        else:
            url = stack.enter_context(temporary_postgres())
        upgrade(url)
        maker = make_sessionmaker(url)
        yield maker
        maker.kw["bind"].dispose()


@pytest.fixture
def owner(Session):
    with Session() as s:
        o = create_owner(s, name=f"hooks-{time.monotonic_ns()}")
        return o.id, ensure_webhook_secret(s, owner_id=o.id, new_secret=new_secret())


def settings(**kw) -> Settings:
    base = dict(
        webhook_allow_private=True,
        webhook_retry_schedule_s="0.05,0.05,0.05",
        webhook_poll_s=0.05,
        webhook_progress_interval_s=0,
        webhook_timeout_s=5,
    )
    return Settings(**{**base, **kw})


def until_settled(Session, s: Settings, job_id: str, timeout: float = 20.0) -> list[WebhookDelivery]:
    """Sender passes until every delivery of the job is delivered or given up."""
    deadline = time.monotonic() + timeout
    while True:
        run_pass(Session, s)
        with Session() as db:
            rows = db.query(WebhookDelivery).filter_by(job_id=job_id).all()
        if rows and all(r.status != "pending" for r in rows):
            return rows
        assert time.monotonic() < deadline, [(r.event, r.status, r.attempts, r.last_error) for r in rows]
        time.sleep(0.05)


def run_training(Session, s: Settings, owner_id: str, url: str, events=ALL) -> str:
    """A training through its whole life, the sender passing between the worker's writes."""
    with Session() as db:
        job = create_training(
            db,
            owner_id=owner_id,
            dataset_id=None,
            name="t",
            trigger="sks",
            params={},
            total_steps=3,
            webhook_url=url,
            webhook_events=events,
        )
        job_id = job.id
        assert claim_training(db, job_id=job_id, worker_id="w")
    run_pass(Session, s)
    with Session() as db:
        for step in (1, 2, 3):
            assert record_progress(
                db,
                job_id=job_id,
                worker_id="w",
                step=step,
                total_steps=3,
                loss=0.5,
                seconds_per_step=0.1,
                eta_seconds=1.0,
            )
            run_pass(Session, s)
        add_preview(db, job_id=job_id, step=2, index=0, storage_key="k", prompt="a red box")
        run_pass(Session, s)
        assert finish_training(
            db, job_id=job_id, worker_id="w", peft_prefix="p", comfyui_key="c", rank=4, alpha=4.0
        )
    return job_id


def test_a_receiver_failing_twice_gets_each_event_exactly_once_signed(Session, owner):
    owner_id, secret = owner
    s = settings()
    receiver = Receiver(secret, fail_first=2).start()
    try:
        job_id = run_training(Session, s, owner_id, receiver.url)
        rows = until_settled(Session, s, job_id)
    finally:
        receiver.stop()
    assert receiver.rejected == []  # every request carried a valid signature
    types = receiver.events()
    assert types.count("training.start") == 1 and types.count("training.completed") == 1
    assert types.count("training.preview") == 1
    assert 1 <= types.count("training.progress") <= 3
    assert len(types) == len(rows)  # one accepted delivery per recorded event...
    assert set(receiver.attempts.values()) == {3}  # ...after two refused attempts, with the same id
    assert all(r.status == "delivered" and r.attempts == 3 and r.last_status_code == 200 for r in rows)
    done = next(b for b in receiver.accepted.values() if b["type"] == "training.completed")
    assert done["data"]["id"] == job_id and done["data"]["status"] == "succeeded" and done["data"]["lora_id"]
    preview = next(b for b in receiver.accepted.values() if b["type"] == "training.preview")
    assert preview["data"]["preview"] == {
        "step": 2,
        "index": 0,
        "prompt": "a red box",
        "url": f"/v1/trainings/{job_id}/previews/2/0",
    }
    with Session() as db:
        failures = {(e, st): f for e, st, _, f in webhook_counts(db)}
    assert failures[("completed", "delivered")] >= 2  # the metric counts the refused attempts


def test_the_filter_sends_only_the_events_asked_for(Session, owner):
    owner_id, secret = owner
    s = settings()
    receiver = Receiver(secret).start()
    try:
        with Session() as db:
            gen = create_generation(
                db,
                owner_id=owner_id,
                prompt="p",
                params={},
                num_images=2,
                total_steps=2,
                webhook_url=receiver.url,
                webhook_events=["preview", "completed"],
            )
            assert claim_generation(db, job_id=gen.id, worker_id="w")
            assert record_generation_progress(db, job_id=gen.id, worker_id="w", step=1)
            run_pass(Session, s)
            for i in range(2):
                add_generation_image(db, job_id=gen.id, index=i, storage_key=f"k{i}", width=32, height=32, seed=i)
            assert finish_generation(db, job_id=gen.id, worker_id="w")
        until_settled(Session, s, gen.id)
    finally:
        receiver.stop()
    assert sorted(receiver.events()) == ["generation.completed", "generation.preview", "generation.preview"]
    images = sorted(b["data"]["image"]["index"] for b in receiver.accepted.values() if "image" in b["data"])
    assert images == [0, 1]


def test_progress_is_throttled(Session, owner):
    owner_id, secret = owner
    s = settings(webhook_progress_interval_s=3600)
    receiver = Receiver(secret).start()
    try:
        job_id = run_training(Session, s, owner_id, receiver.url, events=["progress"])
        until_settled(Session, s, job_id)
    finally:
        receiver.stop()
    assert receiver.events() == ["training.progress"]  # three steps reported, one progress event in the hour


def test_a_receiver_that_never_accepts_is_given_up_after_the_schedule(Session, owner):
    owner_id, secret = owner
    s = settings(webhook_retry_schedule_s="0.05,0.05")
    receiver = Receiver(secret, fail_first=99).start()
    try:
        job_id = run_training(Session, s, owner_id, receiver.url, events=["completed"])
        [row] = until_settled(Session, s, job_id)
    finally:
        receiver.stop()
    assert (row.status, row.attempts, row.last_status_code) == ("failed", 3, 500)
    assert receiver.accepted == {}


def test_the_address_is_checked_again_at_send_time(Session, owner):
    """A URL that passed at submit time but resolves to a private address when sent is never called."""
    owner_id, secret = owner
    receiver = Receiver(secret).start()
    try:
        job_id = run_training(Session, settings(), owner_id, receiver.url, events=["completed"])
        [row] = until_settled(Session, settings(webhook_allow_private=False, webhook_retry_schedule_s=""), job_id)
    finally:
        receiver.stop()
    assert row.status == "failed" and "loopback" in row.last_error and receiver.attempts == {}


def test_the_body_and_id_are_the_same_on_every_attempt(Session, owner):
    owner_id, secret = owner
    bodies: dict[str, set[str]] = {}
    receiver = Receiver(secret, fail_first=1)
    handle = receiver._handle

    def recording(headers, raw):
        bodies.setdefault(headers["webhook-id"], set()).add(raw.decode())
        return handle(headers, raw)

    receiver._handle = recording
    receiver.start()
    try:
        job_id = run_training(Session, settings(), owner_id, receiver.url, events=["start", "completed"])
        until_settled(Session, settings(), job_id)
    finally:
        receiver.stop()
    assert len(bodies) == 2 and all(len(b) == 1 for b in bodies.values())
    assert {json.loads(next(iter(b)))["type"] for b in bodies.values()} == {"training.start", "training.completed"}
