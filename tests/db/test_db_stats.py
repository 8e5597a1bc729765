"""/metrics' histograms are counted by the database (db.stats): on SQLite and on PostgreSQL they must equal
what counting the rows one by one in Python gives, bucket for bucket, sum for sum, for every label set."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import delete

from db.models import Generation, utcnow
from db.owners import create_owner
from db.stats import generation_seconds_per_image, queue_wait, run_time

BOUNDS = (1, 5, 15, 30, 60, 300)
PER_IMAGE = (0.1, 0.5, 1, 2, 5, 10, 30)


def by_hand(values, bounds):
    return tuple(sum(v <= b for v in values) for b in bounds), len(values), sum(values)


def test_histograms_from_sql_equal_the_rows_counted_one_by_one(session):
    session.execute(delete(Generation))  # this module's database is shared by its tests
    owner = create_owner(session, name="stats")
    rnd, t0 = random.Random(5), utcnow() - timedelta(days=1)
    rows = []
    for i in range(60):
        created = t0 + timedelta(seconds=rnd.uniform(0, 3600))
        # a few starts before their submit (clock skew between machines): counted as no wait
        started = created + timedelta(seconds=rnd.choice([-2.0, 0.0, 1.0, 5.0, rnd.uniform(0, 400)]))
        finished = started + timedelta(seconds=rnd.choice([0.25, 30.0, rnd.uniform(0, 900)]))
        status = rnd.choice(["succeeded", "failed", "canceled", "running", "queued"])
        gen = Generation(
            owner_id=owner.id,
            prompt="p",
            params={},
            num_images=rnd.choice([0, 1, 3]),  # 0 counts as one image, as a division by it would not
            total_steps=1,
            status=status,
            created_at=created,
            started_at=None if status == "queued" else started,
            finished_at=finished if status in ("succeeded", "failed", "canceled") else None,
        )
        session.add(gen)
        rows.append(gen)
    session.commit()

    waits = [max((g.started_at - g.created_at).total_seconds(), 0.0) for g in rows if g.started_at is not None]
    h = queue_wait(session, kind="generation", bounds=BOUNDS)
    want = by_hand(waits, BOUNDS)
    assert (h.at_most, h.count) == want[:2] and h.total == pytest.approx(want[2], abs=1e-2)

    runs = run_time(session, kind="generation", bounds=BOUNDS)
    for status in ("succeeded", "failed", "canceled"):
        values = [(g.finished_at - g.started_at).total_seconds() for g in rows if g.status == status]
        want = by_hand(values, BOUNDS)
        got = runs[status]
        assert (got.at_most, got.count) == want[:2] and got.total == pytest.approx(want[2], abs=1e-2), status
    assert set(runs) == {"succeeded", "failed", "canceled"}  # running and queued jobs have not ended

    per_image = [
        (g.finished_at - g.started_at).total_seconds() / max(g.num_images, 1)
        for g in rows
        if g.status == "succeeded"
    ]
    h = generation_seconds_per_image(session, bounds=PER_IMAGE)
    want = by_hand(per_image, PER_IMAGE)
    assert (h.at_most, h.count) == want[:2] and h.total == pytest.approx(want[2], abs=1e-2)


def test_no_rows_give_empty_histograms(session):
    session.execute(delete(Generation))
    session.commit()
    assert queue_wait(session, kind="generation", bounds=BOUNDS).count == 0
    assert run_time(session, kind="training", bounds=BOUNDS) == {}
    h = generation_seconds_per_image(session, bounds=PER_IMAGE)
    assert (h.at_most, h.count, h.total) == ((0,) * len(PER_IMAGE), 0, 0.0)
