"""Generations over HTTP: submit -> queued + a real message on the generate queue; preset defaults; images.

.venv/bin/python -m pytest tests/api/test_api_generations.py -q
"""

from __future__ import annotations

from api_helpers import auth, lora_safetensors, png, queued_messages

from db.generations import (
    add_generation_image,
    add_generation_warnings,
    claim_generation,
    finish_generation,
    is_generation_cancel_requested,
    record_generation_progress,
)


def test_submit_fills_defaults_and_sends_to_the_generate_queue(client, alice, key_prefix):
    lora = client.post(
        "/v1/loras",
        headers=auth(alice),
        files={"file": ("s.safetensors", lora_safetensors(), "application/octet-stream")},
    ).json()
    r = client.post(
        "/v1/generations",
        headers=auth(alice),
        json={
            "prompt": "a red box",
            "loras": [{"id": lora["id"], "scale": 0.8}],
            "width": 512,
            "height": 768,
            "num_images": 2,
        },
    )
    assert r.status_code == 202, r.text
    gen = r.json()
    assert gen["status"] == "queued" and gen["images"] == []
    p = gen["params"]
    assert (p["steps"], p["guidance"], p["preset"], p["negative_prompt"]) == (50, 5.0, "full", None)
    assert p["loras"] == [{"id": lora["id"], "scale": 0.8}] and 0 <= p["seed"] < 2**31
    assert (p["width"], p["height"], p["num_images"]) == (512, 768, 2)
    assert gen["progress"] == {"step": 0, "total_steps": 50}
    sent = [m for m in queued_messages(key_prefix, "generate") if m["args"] == [gen["id"]]]
    assert len(sent) == 1 and sent[0]["task"] == "o1lora.generate"


def test_dev_preset_defaults_and_explicit_values_win(client, alice):
    gen = client.post(
        "/v1/generations", headers=auth(alice), json={"prompt": "p", "preset": "dev", "seed": 7}
    ).json()
    assert (gen["params"]["steps"], gen["params"]["guidance"], gen["params"]["seed"]) == (28, 0.0, 7)
    gen = client.post(
        "/v1/generations", headers=auth(alice), json={"prompt": "p", "preset": "dev", "steps": 4, "guidance": 2.5}
    ).json()
    assert (gen["params"]["steps"], gen["params"]["guidance"]) == (4, 2.5)


def test_images_appear_and_download_as_png(client, alice, Session, store):
    gen = client.post(
        "/v1/generations", headers=auth(alice), json={"prompt": "p", "num_images": 2, "steps": 3}
    ).json()
    with Session() as s:
        claim_generation(s, job_id=gen["id"], worker_id="g")
        record_generation_progress(s, job_id=gen["id"], worker_id="g", step=3)
        for n in range(2):
            store.put_bytes(f"generations/{gen['id']}/{n}.png", png(64, 32, color=(n, 0, 0)))
            add_generation_image(
                s,
                job_id=gen["id"],
                index=n,
                storage_key=f"generations/{gen['id']}/{n}.png",
                width=64,
                height=32,
                seed=gen["params"]["seed"] + n,
            )
        finish_generation(s, job_id=gen["id"], worker_id="g")
    got = client.get(f"/v1/generations/{gen['id']}", headers=auth(alice)).json()
    assert got["status"] == "succeeded" and got["progress"] == {"step": 3, "total_steps": 3}
    assert [(i["index"], i["url"], i["seed"]) for i in got["images"]] == [
        (n, f"/v1/generations/{gen['id']}/images/{n}", gen["params"]["seed"] + n) for n in range(2)
    ]
    r = client.get(got["images"][1]["url"], headers=auth(alice))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == png(64, 32, color=(1, 0, 0))
    assert client.get(f"/v1/generations/{gen['id']}/images/2", headers=auth(alice)).status_code == 404
    listed = client.get("/v1/generations?status=succeeded", headers=auth(alice)).json()
    assert gen["id"] in [g["id"] for g in listed["data"]]


def test_cancel_queued_at_once_running_at_the_next_step_finished_409(client, alice, bob, Session):
    queued = client.post("/v1/generations", headers=auth(alice), json={"prompt": "p", "steps": 2}).json()
    assert client.post(f"/v1/generations/{queued['id']}/cancel", headers=auth(bob)).status_code == 404  # not bob's
    r = client.post(f"/v1/generations/{queued['id']}/cancel", headers=auth(alice))
    assert r.status_code == 200 and r.json() == {
        "id": queued["id"],
        "status": "canceled",
        "cancel_requested": True,
    }
    with Session() as s:
        assert claim_generation(s, job_id=queued["id"], worker_id="g") is False  # a late message does nothing
    assert client.get(f"/v1/generations/{queued['id']}", headers=auth(alice)).json()["status"] == "canceled"

    running = client.post("/v1/generations", headers=auth(alice), json={"prompt": "p", "steps": 2}).json()
    with Session() as s:
        claim_generation(s, job_id=running["id"], worker_id="g")
    r = client.post(f"/v1/generations/{running['id']}/cancel", headers=auth(alice))
    assert r.json() == {"id": running["id"], "status": "running", "cancel_requested": True}
    with Session() as s:
        assert is_generation_cancel_requested(s, job_id=running["id"])  # what the worker reads between steps
    got = client.get(f"/v1/generations/{running['id']}", headers=auth(alice)).json()
    assert got["status"] == "running" and got["cancel_requested"] is True

    r = client.post(f"/v1/generations/{queued['id']}/cancel", headers=auth(alice))
    assert r.status_code == 409 and "already canceled" in r.json()["error"]["message"]
    assert client.post("/v1/generations/nope/cancel", headers=auth(alice)).status_code == 404


def test_warnings_of_a_generation_are_shown(client, alice, Session):
    gen = client.post("/v1/generations", headers=auth(alice), json={"prompt": "p", "steps": 2}).json()
    assert gen["warnings"] == [] and gen["cancel_requested"] is False
    with Session() as s:
        add_generation_warnings(s, job_id=gen["id"], warnings=["LoRA abc: 3 of 56 keys placed nowhere"])
    got = client.get(f"/v1/generations/{gen['id']}", headers=auth(alice)).json()
    assert got["warnings"] == ["LoRA abc: 3 of 56 keys placed nowhere"]
