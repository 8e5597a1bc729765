"""Webhooks over HTTP: the secret route, the fields on trainings and generations (private URLs refused with a
422 naming the field: this app does not allow private receivers), the job's webhook block; and /metrics
counting the jobs by status from the same database.
"""

from __future__ import annotations

import pytest
from api_helpers import auth
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from db.models import Generation, TrainingJob
from webhooks.signing import key_of

PRIVATE = [
    "http://127.0.0.1:9000/hook",
    "http://localhost/hook",
    "http://10.0.0.7/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]:8080/",
    "http://192.168.1.20/",
]
PUBLIC = "https://8.8.8.8/o1lora-hook"  # an address literal: resolves without DNS


def test_the_secret_is_whsec_base64_made_once_per_owner(client, alice, bob):
    a = client.get("/v1/webhooks/default/secret", headers=auth(alice))
    assert a.status_code == 200, a.text
    key = a.json()["key"]
    assert key.startswith("whsec_") and len(key_of(key)) == 32
    assert client.get("/v1/webhooks/default/secret", headers=auth(alice)).json()["key"] == key
    assert client.get("/v1/webhooks/default/secret", headers=auth(bob)).json()["key"] != key
    assert client.get("/v1/webhooks/default/secret").status_code == 401


@pytest.mark.parametrize("url", PRIVATE)
def test_a_private_url_is_a_422_naming_the_field(client, alice, dataset, url):
    for path, body in (
        ("/v1/generations", {"prompt": "p"}),
        ("/v1/trainings", {"dataset_id": dataset["id"], "trigger": "sks"}),
    ):
        r = client.post(path, headers=auth(alice), json={**body, "webhook_url": url})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["field"] == "webhook_url" and error["message"].startswith("webhook_url: ")
        assert "address" in error["message"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"webhook_url": "ftp://8.8.8.8/"}, "webhook_url"),
        ({"webhook_url": "http://no-such-host.invalid/"}, "webhook_url"),
        ({"webhook_url": PUBLIC, "webhook_events_filter": ["logs"]}, "webhook_events_filter[0]"),
        ({"webhook_url": PUBLIC, "webhook_events_filter": []}, "webhook_events_filter"),
        ({"webhook_url": PUBLIC, "webhook_events_filter": ["start", "start"]}, "webhook_events_filter"),
    ],
)
def test_bad_webhook_fields_are_422_naming_them(client, alice, body, field):
    r = client.post("/v1/generations", headers=auth(alice), json={"prompt": "p", **body})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_the_webhook_is_stored_apart_from_the_params_and_shown_on_the_job(client, alice, dataset, Session):
    r = client.post(
        "/v1/trainings",
        headers=auth(alice),
        json={
            "dataset_id": dataset["id"],
            "trigger": "sks",
            "webhook_url": PUBLIC,
            "webhook_events_filter": ["completed", "start"],
        },
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["webhook"] == {
        "url": PUBLIC,
        "events_filter": ["completed", "start"],
        "deliveries": [],
        "deliveries_total": 0,
    }
    assert not {"webhook_url", "webhook_events_filter"} & set(job["params"])  # the trainer never sees them
    with Session() as s:
        row = s.get(TrainingJob, job["id"])
        assert (row.webhook_url, row.webhook_events, row.webhook_open) == (PUBLIC, ["completed", "start"], True)
    gen = client.post("/v1/generations", headers=auth(alice), json={"prompt": "p", "webhook_url": PUBLIC}).json()
    assert gen["webhook"]["events_filter"] == ["start", "progress", "preview", "completed"]  # the default: all
    plain = client.post("/v1/generations", headers=auth(alice), json={"prompt": "p"}).json()
    assert plain["webhook"] is None


def metric_samples(text: str) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_the_jobs_by_status_and_queue_from_the_database(client, alice, Session):
    client.post("/v1/generations", headers=auth(alice), json={"prompt": "p"})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = metric_samples(r.text)
    with Session() as s:
        for model, kind, queue in ((TrainingJob, "training", "train"), (Generation, "generation", "generate")):
            queued = s.scalar(select(func.count()).select_from(model).where(model.status == "queued"))
            key = ("o1lora_jobs", (("kind", kind), ("queue", queue), ("status", "queued")))
            assert samples[key] == queued and (kind == "training" or queued >= 1)
    assert ("o1lora_workers", ()) in samples
    assert ("o1lora_webhook_delivery_failures_total", (("event", "completed"),)) in samples


def test_openapi_documents_the_webhook_fields_and_routes(app):
    spec = app.openapi()
    schemas = spec["components"]["schemas"]
    for name in ("TrainingCreate", "GenerationCreate"):
        props = schemas[name]["properties"]
        assert (
            "whsec" not in props["webhook_url"]["description"]
            and "webhook-signature" in props["webhook_url"]["description"]
        )
        assert props["webhook_events_filter"]["items"]["enum"] == ["start", "progress", "preview", "completed"]
    secret = spec["paths"]["/v1/webhooks/default/secret"]["get"]
    assert secret["security"] and {"200", "401", "503"} <= set(secret["responses"])
    assert "/metrics" in spec["paths"]
