"""Owner isolation: every route answers 404 for another owner's ids (and changes nothing); 401 without a key.

.venv/bin/python -m pytest tests/api/test_api_isolation.py -q
"""

from __future__ import annotations

import pytest
from api_helpers import auth, db_counts, lora_safetensors, png, store_files

from db.generations import add_generation_image
from db.training import add_preview

ROUTES_WITH_IDS = [
    ("GET", "/v1/datasets/{dataset}"),
    ("DELETE", "/v1/datasets/{dataset}"),
    ("GET", "/v1/trainings/{job}"),
    ("POST", "/v1/trainings/{job}/cancel"),
    ("GET", "/v1/trainings/{job}/events"),
    ("GET", "/v1/trainings/{job}/previews/0/0"),
    ("GET", "/v1/loras/{lora}"),
    ("GET", "/v1/loras/{lora}/file"),
    ("GET", "/v1/loras/{lora}/file?format=comfyui"),
    ("DELETE", "/v1/loras/{lora}"),
    ("GET", "/v1/generations/{gen}"),
    ("GET", "/v1/generations/{gen}/events"),
    ("GET", "/v1/generations/{gen}/images/0"),
]
ALL_ROUTES = ROUTES_WITH_IDS + [
    ("GET", "/v1/datasets"),
    ("POST", "/v1/datasets"),
    ("GET", "/v1/trainings"),
    ("POST", "/v1/trainings"),
    ("GET", "/v1/loras"),
    ("POST", "/v1/loras"),
    ("GET", "/v1/generations"),
    ("POST", "/v1/generations"),
]


@pytest.fixture(scope="module")
def alices(client, alice, Session, store):
    """One of everything, owned by alice."""
    ds = client.post("/v1/datasets", headers=auth(alice), files=[("files", ("a.png", png(), "image/png"))]).json()
    job = client.post("/v1/trainings", headers=auth(alice), json={"dataset_id": ds["id"], "trigger": "t"}).json()
    lora = client.post(
        "/v1/loras",
        headers=auth(alice),
        files={"file": ("s.safetensors", lora_safetensors(), "application/octet-stream")},
    ).json()
    gen = client.post(
        "/v1/generations",
        headers=auth(alice),
        json={"prompt": "p", "width": 64, "height": 64, "loras": [{"id": lora["id"]}]},
    ).json()
    store.put_bytes("x/preview.png", png(32, 32))
    with Session() as s:
        add_preview(s, job_id=job["id"], step=0, index=0, storage_key="x/preview.png")
        add_generation_image(
            s, job_id=gen["id"], index=0, storage_key="x/preview.png", width=32, height=32, seed=1
        )
    return {"dataset": ds["id"], "job": job["id"], "lora": lora["id"], "gen": gen["id"]}


@pytest.mark.parametrize("method, path", ROUTES_WITH_IDS)
def test_another_owners_ids_answer_404_and_change_nothing(
    client, bob, alice, alices, method, path, Session, settings
):
    before = (db_counts(Session), store_files(settings))
    r = client.request(method, path.format(**alices), headers=auth(bob))
    assert r.status_code == 404, (method, path, r.status_code, r.text)
    assert "not found" in r.json()["error"]["message"]
    assert (db_counts(Session), store_files(settings)) == before
    if method == "GET" and not path.endswith("/events"):  # (an event stream of a queued job never ends)
        assert client.get(path.format(**alices), headers=auth(alice)).status_code == 200  # the owner is answered


def test_references_to_another_owners_resources_are_404(client, bob, alices):
    r = client.post("/v1/trainings", headers=auth(bob), json={"dataset_id": alices["dataset"], "trigger": "t"})
    assert r.status_code == 404 and "dataset_id" in r.json()["error"]["message"]
    r = client.post("/v1/generations", headers=auth(bob), json={"prompt": "p", "loras": [{"id": alices["lora"]}]})
    assert r.status_code == 404 and "loras[0].id" in r.json()["error"]["message"]


def test_lists_show_only_your_own(client, bob, alices):
    for path, key in (
        ("/v1/datasets", "dataset"),
        ("/v1/trainings", "job"),
        ("/v1/loras", "lora"),
        ("/v1/generations", "gen"),
    ):
        ids = [x["id"] for x in client.get(path + "?limit=100", headers=auth(bob)).json()["data"]]
        assert alices[key] not in ids


@pytest.mark.parametrize("method, path", ALL_ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer", "Bearer o1l_not-a-key", "Basic YWxpY2U6cHc="])
def test_no_or_bad_key_is_401(client, alices, method, path, header):
    headers = {"Authorization": header} if header else {}
    r = client.request(method, path.format(**alices), headers=headers)
    assert r.status_code == 401, (method, path, r.status_code)
    assert r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["error"]["message"]


def test_health_and_ready_need_no_key(client):
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200 and r.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "store": "ok"},
    }
