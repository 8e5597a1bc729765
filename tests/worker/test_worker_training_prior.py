"""A training job that draws prior images first (core.train.prior) tells the row, the event stream and the API
what it is doing before step 1, and a cancel asked for meanwhile stops it there, without waiting for the rest of
the images (minutes on a full-size model). Run in-process on a tiny model, against the real database and Redis."""

from __future__ import annotations

import json

import redis
from test_worker_training import new_job
from worker_helpers import put_dataset

from api.routes.trainings import to_public
from db.owners import create_owner
from db.training import cancel_training, get_training
from service.events import channel
from worker import training


def events_of(sub) -> list[dict]:
    out = []
    while (m := sub.get_message(timeout=0.2)) is not None:
        if m["type"] == "message":
            out.append(json.loads(m["data"]))
    return out


def test_prior_images_show_as_the_jobs_phase_until_training_begins(tctx):
    c = tctx
    with c.sessions() as s:
        owner = create_owner(s, name="p1")
    ds = put_dataset(c, owner.id, n=3)
    job = new_job(c, owner.id, ds.id, steps=2, prior_preservation=True)
    sub = redis.Redis.from_url(c.settings.resolved_redis_url).pubsub()
    sub.subscribe(channel("training", job.id))
    assert training.run_training(job.id, c) == "succeeded"
    events = events_of(sub)
    sub.close()
    phases = [e["data"]["phase"] for e in events if e["type"] == "progress" and "phase" in e["data"]]
    assert phases[0] == "prior images: 0 of 3" and "prior images: 3 of 3" in phases
    assert phases[-1] is None  # the first step's report says training has begun
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
        assert row.phase is None and to_public(row).progress.phase is None
        assert row.step == 2


def test_the_api_shows_the_phase_of_a_running_job_only(tctx):
    from datetime import datetime, timezone

    c = tctx
    with c.sessions() as s:
        owner = create_owner(s, name="p2")
    ds = put_dataset(c, owner.id, n=3)
    job = new_job(c, owner.id, ds.id, steps=2)
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
        row.phase = "prior images: 1 of 3"
        row.status, row.started_at = "running", datetime.now(timezone.utc)
        s.commit()
        assert to_public(row).progress.phase == "prior images: 1 of 3"
        row.status = "failed"
        assert to_public(row).progress.phase is None


def test_a_cancel_while_prior_images_are_drawn_stops_before_step_1(tctx, monkeypatch):
    from core.train import prior

    c = tctx
    with c.sessions() as s:
        owner = create_owner(s, name="p3")
    ds = put_dataset(c, owner.id, n=4)
    job = new_job(c, owner.id, ds.id, steps=50, prior_preservation=True)
    monkeypatch.setattr(prior, "BATCH_PIXELS", 64 * 64)  # one image per sampler call: four chances to stop
    drawn = []
    real_png = prior._png

    def png_then_cancel(image):  # the owner presses Cancel while the first image is being written
        drawn.append(1)
        if len(drawn) == 1:
            with c.sessions() as s:
                assert cancel_training(s, job_id=job.id, owner_id=owner.id) == "cancel_requested"
        return real_png(image)

    monkeypatch.setattr(prior, "_png", png_then_cancel)
    assert training.run_training(job.id, c) == "canceled"
    assert len(drawn) < 4  # it did not draw them all first
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
        assert row.status == "canceled" and row.step == 0
