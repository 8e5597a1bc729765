"""What one owner may ask of the workers: at most N active (queued + running) jobs -> 429 with Retry-After, and a
bound on one generation's width * height * steps * num_images -> 422 naming the bound. Nothing is written when
refused.

    .venv/bin/python -m pytest tests/api/test_api_quota.py -q
"""

from __future__ import annotations

import pytest
from api_helpers import auth, db_counts, owner_headers, png, queued_messages
from fastapi.testclient import TestClient

from api.main import create_app
from db.generations import claim_generation, fail_generation


@pytest.fixture(scope="module")
def limited(settings, app):
    """An app on the same database whose owners may have 2 active generations and 1 active training."""
    tight = settings.model_copy(
        update={"max_active_generations": 2, "max_active_trainings": 1, "active_limit_retry_after_s": 17}
    )
    with TestClient(create_app(tight, enqueuer=app.state.enqueuer)) as c:
        yield c


def test_active_generations_over_the_limit_are_429_with_retry_after(limited, Session, key_prefix):
    carol = owner_headers(Session, "carol")
    first, second = (
        limited.post("/v1/generations", headers=auth(carol), json={"prompt": "p", "steps": 2}).json()
        for _ in range(2)
    )
    before, sent = db_counts(Session), len(queued_messages(key_prefix, "generate"))
    r = limited.post("/v1/generations", headers=auth(carol), json={"prompt": "p", "steps": 2})
    assert r.status_code == 429 and r.headers["retry-after"] == "17"
    assert r.json()["error"]["code"] == "too_many_active_jobs" and "limit is 2" in r.json()["error"]["message"]
    assert db_counts(Session) == before and len(queued_messages(key_prefix, "generate")) == sent

    other = owner_headers(Session, "dan")  # the limit is per owner
    assert (
        limited.post("/v1/generations", headers=auth(other), json={"prompt": "p", "steps": 2}).status_code == 202
    )

    with Session() as s:  # a running one still counts; a finished one frees its place
        claim_generation(s, job_id=first["id"], worker_id="g")
    assert limited.post("/v1/generations", headers=auth(carol), json={"prompt": "p"}).status_code == 429
    with Session() as s:
        fail_generation(s, job_id=first["id"], worker_id="g", error="x")
    assert (
        limited.post("/v1/generations", headers=auth(carol), json={"prompt": "p", "steps": 2}).status_code == 202
    )
    assert limited.post(f"/v1/generations/{second['id']}/cancel", headers=auth(carol)).status_code == 200
    assert (
        limited.post("/v1/generations", headers=auth(carol), json={"prompt": "p", "steps": 2}).status_code == 202
    )


def test_active_trainings_over_the_limit_are_429(limited, Session):
    erin = owner_headers(Session, "erin")
    ds = limited.post(
        "/v1/datasets",
        headers=auth(erin),
        files=[("files", ("a.png", png(), "image/png"))],
        data={"resolution": "64"},
    ).json()
    body = {"dataset_id": ds["id"], "trigger": "sks", "steps": 10, "sample_every": 0}
    first = limited.post("/v1/trainings", headers=auth(erin), json=body)
    assert first.status_code == 202
    r = limited.post("/v1/trainings", headers=auth(erin), json=body)
    assert (
        r.status_code == 429 and r.headers["retry-after"] == "17" and "trainings" in r.json()["error"]["message"]
    )
    limited.post(f"/v1/trainings/{first.json()['id']}/cancel", headers=auth(erin))
    assert limited.post("/v1/trainings", headers=auth(erin), json=body).status_code == 202


@pytest.mark.parametrize("size, steps, images", [(1024, 50, 4), (2048, 50, 1), (4096, 12, 1)])
def test_generation_cost_within_the_default_bound_is_accepted(client, alice, size, steps, images):
    r = client.post(
        "/v1/generations",
        headers=auth(alice),
        json={"prompt": "p", "width": size, "height": size, "steps": steps, "num_images": images},
    )
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("size, steps, images", [(4096, None, 1), (2048, 50, 2), (1024, 500, 8)])
def test_generation_cost_over_the_bound_is_422_saying_the_bound(
    client, alice, Session, settings, size, steps, images
):
    before = db_counts(Session)
    body = {
        "prompt": "p",
        "width": size,
        "height": size,
        "num_images": images,
        **({"steps": steps} if steps else {}),
    }
    r = client.post("/v1/generations", headers=auth(alice), json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "over_cost_bound" and str(settings.max_generation_cost) in error["message"]
    assert str(size * size * (steps or 50) * images) in error["message"]
    assert db_counts(Session) == before
