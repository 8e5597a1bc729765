"""Training jobs over HTTP: submit -> row queued + a real Celery message in Redis; defaults; 422s naming the
field; progress and previews as the worker writes them; cancel; a dead broker leaves the row queued.

    .venv/bin/python -m pytest tests/api/test_api_trainings.py -q
"""

from __future__ import annotations

import pytest
from api_helpers import auth, make_celery, png, queued_messages
from fastapi.testclient import TestClient

from api.main import create_app
from db.training import (
    add_preview,
    claim_training,
    fail_training,
    finish_training,
    get_training,
    record_checkpoint,
    record_progress,
)
from jobqueue.enqueue import Enqueuer


def submit(client, owner, dataset, **fields):
    return client.post(
        "/v1/trainings", headers=auth(owner), json={"dataset_id": dataset["id"], "trigger": "sks", **fields}
    )


def test_submit_queues_the_row_and_sends_the_message_by_name(client, alice, dataset, key_prefix, Session):
    r = submit(client, alice, dataset)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/trainings/{job['id']}"
    assert job["status"] == "queued" and job["lora_id"] is None and job["previews"] == []
    assert job["params"] == {
        "dataset_id": dataset["id"],
        "trigger": "sks",
        "name": "sks",
        "preset": None,
        "steps": 2500,
        "rank": 16,
        "alpha": 16.0,
        "learning_rate": 1e-4,
        "resolution": 1024,
        "batch_size": 1,
        "sample_every": 500,
        "sample_prompts": [],
        "seed": 0,
        "checkpoint_every": None,
        "repeats": 1,
        "flip": False,
        "caption_dropout": 0.0,
        "prior_preservation": False,
        "lr_schedule": "constant",
        "warmup_steps": 0,
        "grad_accum": 1,
        "sample_steps": 20,
        "sample_size": None,
        "min_side": 16,
        "validation_dataset_id": None,
        "validation_fraction": None,
        "validation_max_images": 4,
        "validation_every": 500,
        "validation_sigmas": 8,
        "validation_seeds": 2,
        "publish": "last",
        "early_stop_patience": 0,
        "base_precision": "auto",
    }
    assert job["progress"] == {
        "step": 0,
        "total_steps": 2500,
        "loss": None,
        "seconds_per_step": None,
        "eta_seconds": None,
        "validation_loss": None,
        "phase": None,
    }
    assert job["validation"] is None
    sent = [m for m in queued_messages(key_prefix, "train") if m["args"] == [job["id"]]]
    assert len(sent) == 1 and sent[0]["task"] == "o1lora.train"
    with Session() as s:
        row = get_training(s, job_id=job["id"])
        assert row.celery_task_id == sent[0]["id"] and row.enqueued_at is not None


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"rank": 0}, "rank"),
        ({"rank": "big"}, "rank"),
        ({"steps": -5}, "steps"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"alpha": -1}, "alpha"),
        ({"resolution": 1000}, "resolution"),
        ({"batch_size": 0}, "batch_size"),
        ({"sample_every": -1}, "sample_every"),
        ({"steps": 10, "sample_every": 20}, "sample_every"),
        ({"sample_prompts": ["ok", " "]}, "sample_prompts"),
        ({"sample_prompts": ["p"] * 9}, "sample_prompts"),
        ({"trigger": ""}, "trigger"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"sample_size": 100}, "sample_size"),
        ({"steps": 10, "warmup_steps": 11}, "warmup_steps"),
        ({"caption_dropout": 1.5}, "caption_dropout"),
        ({"seed": -1}, "seed"),
        ({"learning_rte": 1e-3}, "learning_rte"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"validation_every": -1}, "validation_every"),
        ({"publish": "first"}, "publish"),
        ({"preset": "fastest"}, "preset"),
        ({"validation_every": 0, "publish": "best"}, "publish"),
        ({"validation_every": 0, "early_stop_patience": 3}, "early_stop_patience"),
        ({"validation_sigmas": 0}, "validation_sigmas"),
        ({"base_precision": "fp16"}, "base_precision"),
        ({"base_precision": 8}, "base_precision"),
    ],
)
def test_invalid_values_are_422_naming_the_field(client, alice, dataset, fields, field, key_prefix):
    before = len(queued_messages(key_prefix, "train"))
    r = submit(client, alice, dataset, **fields)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert len(queued_messages(key_prefix, "train")) == before


def test_base_precision_is_accepted_and_reaches_the_trainers_config(client, alice, dataset):
    from core.train import TrainConfig
    from worker.training import JOB_KEYS

    r = submit(client, alice, dataset, base_precision="fp8")
    assert r.status_code == 202, r.text
    params = r.json()["params"]
    assert params["base_precision"] == "fp8"
    cfg = TrainConfig.from_request(
        params, not_training=JOB_KEYS, model_path="m", out_dir="o", checkpoint_every=100
    )
    assert cfg.base_precision == "fp8"
    cfg.validate()
    bad = submit(client, alice, dataset, base_precision="fp16")
    detail = bad.json()["error"]["message"]
    assert bad.status_code == 422 and "base_precision" in detail and "'auto', 'bf16' or 'fp8'" in detail, detail


def test_missing_dataset_is_404_naming_the_field(client, alice):
    r = client.post("/v1/trainings", headers=auth(alice), json={"dataset_id": "nope", "trigger": "sks"})
    assert r.status_code == 404 and r.json()["error"]["message"].startswith("dataset_id:")


def test_progress_previews_and_lora_appear_as_the_worker_writes_them(client, alice, dataset, Session, store):
    job = submit(client, alice, dataset, steps=20, sample_every=10, sample_prompts=["a box"]).json()
    with Session() as s:
        assert claim_training(s, job_id=job["id"], worker_id="w1")
        record_progress(
            s,
            job_id=job["id"],
            worker_id="w1",
            step=10,
            total_steps=20,
            loss=0.07,
            seconds_per_step=0.5,
            eta_seconds=5.0,
        )
        record_checkpoint(s, job_id=job["id"], worker_id="w1", path="/work/ck/step-10", step=10)
        store.put_bytes(f"trainings/{job['id']}/previews/step-10-0.png", png(32, 32))
        add_preview(
            s,
            job_id=job["id"],
            step=10,
            index=0,
            prompt="a box",
            storage_key=f"trainings/{job['id']}/previews/step-10-0.png",
        )
    got = client.get(f"/v1/trainings/{job['id']}", headers=auth(alice)).json()
    assert (
        got["status"] == "running" and got["started_at"] and got["attempt"] == 1 and got["checkpoint_step"] == 10
    )
    assert "/work/ck" not in str(got)  # server paths stay private
    assert got["progress"] == {
        "step": 10,
        "total_steps": 20,
        "loss": 0.07,
        "seconds_per_step": 0.5,
        "eta_seconds": 5.0,
        "validation_loss": None,
        "phase": None,
    }
    assert got["previews"] == [
        {"step": 10, "index": 0, "prompt": "a box", "url": f"/v1/trainings/{job['id']}/previews/10/0"}
    ]
    img = client.get(got["previews"][0]["url"], headers=auth(alice))
    assert img.status_code == 200 and img.headers["content-type"] == "image/png" and img.content == png(32, 32)
    assert client.get(f"/v1/trainings/{job['id']}/previews/10/1", headers=auth(alice)).status_code == 404
    with Session() as s:
        lora_id = finish_training(
            s, job_id=job["id"], worker_id="w1", peft_prefix=None, comfyui_key=None, rank=16, alpha=16.0
        )
    done = client.get(f"/v1/trainings/{job['id']}", headers=auth(alice)).json()
    assert (done["status"], done["lora_id"], done["progress"]["step"]) == ("succeeded", lora_id, 20)
    assert done["finished_at"] is not None


def test_list_filters_by_status_and_paginates(client, alice, dataset, Session):
    a, b = submit(client, alice, dataset).json(), submit(client, alice, dataset).json()
    with Session() as s:
        claim_training(s, job_id=b["id"], worker_id="w")
        fail_training(s, job_id=b["id"], worker_id="w", error="CUDA out of memory")
    failed = client.get("/v1/trainings?status=failed", headers=auth(alice)).json()
    assert b["id"] in [j["id"] for j in failed["data"]] and all(j["status"] == "failed" for j in failed["data"])
    assert next(j for j in failed["data"] if j["id"] == b["id"])["error"] == "CUDA out of memory"
    queued = client.get("/v1/trainings?status=queued&limit=100", headers=auth(alice)).json()
    assert a["id"] in [j["id"] for j in queued["data"]] and b["id"] not in [j["id"] for j in queued["data"]]
    page = client.get("/v1/trainings?limit=1", headers=auth(alice)).json()
    assert len(page["data"]) == 1 and page["count"] >= 2
    assert client.get("/v1/trainings?status=paused", headers=auth(alice)).status_code == 422


def test_cancel_queued_running_and_finished(client, alice, dataset, Session):
    queued = submit(client, alice, dataset).json()
    r = client.post(f"/v1/trainings/{queued['id']}/cancel", headers=auth(alice))
    assert r.status_code == 200 and r.json() == {
        "id": queued["id"],
        "status": "canceled",
        "cancel_requested": False,
    }
    with Session() as s:
        assert claim_training(s, job_id=queued["id"], worker_id="w") is False  # a late message does nothing

    running = submit(client, alice, dataset).json()
    with Session() as s:
        claim_training(s, job_id=running["id"], worker_id="w")
    r = client.post(f"/v1/trainings/{running['id']}/cancel", headers=auth(alice))
    assert r.json() == {"id": running["id"], "status": "running", "cancel_requested": True}

    r = client.post(f"/v1/trainings/{queued['id']}/cancel", headers=auth(alice))
    assert r.status_code == 409 and "already canceled" in r.json()["error"]["message"]


def test_dead_broker_still_answers_202_and_leaves_the_row_queued_for_the_reconciler(
    settings, alice, dataset, Session
):
    app = create_app(settings, enqueuer=Enqueuer(lambda: make_celery("redis://127.0.0.1:1/0", "x:")))
    with TestClient(app) as c:
        r = c.post("/v1/trainings", headers=auth(alice), json={"dataset_id": dataset["id"], "trigger": "sks"})
    assert r.status_code == 202 and r.json()["status"] == "queued"
    with Session() as s:
        row = get_training(s, job_id=r.json()["id"])
        assert row.status == "queued" and row.enqueued_at is None and row.celery_task_id is None


def test_a_validation_dataset_must_be_yours_and_not_the_training_set(client, alice, dataset):
    r = submit(client, alice, dataset, validation_dataset_id="nope")
    assert r.status_code == 404 and r.json()["error"]["message"].startswith("validation_dataset_id:")
    r = submit(client, alice, dataset, validation_dataset_id=dataset["id"])
    assert r.status_code == 422 and "validation_dataset_id must name another dataset" in r.text


def test_the_validation_series_and_the_best_or_last_lora(client, alice, dataset, Session, store):
    from db.training import record_validation

    r = submit(client, alice, dataset, steps=20, sample_every=0, validation_every=5, publish="best")
    assert r.status_code == 202, r.text
    job = r.json()
    summary = {
        "series": [{"step": 5, "loss": 0.30}, {"step": 10, "loss": 0.21}, {"step": 15, "loss": 0.24}],
        "baseline": 0.35,
        "best_step": 10,
        "best_loss": 0.21,
        "evals_since_best": 1,
        "seconds": 1.5,
        "images": 2,
    }
    with Session() as s:
        assert claim_training(s, job_id=job["id"], worker_id="w1")
        assert record_validation(s, job_id=job["id"], worker_id="w1", validation=summary)
        assert not record_validation(s, job_id=job["id"], worker_id="w2", validation={})  # not the owner
    got = client.get(f"/v1/trainings/{job['id']}", headers=auth(alice)).json()
    assert got["validation"] == summary and got["progress"]["validation_loss"] == 0.24
    listed = client.get("/v1/trainings", headers=auth(alice)).json()["data"]
    assert next(j for j in listed if j["id"] == job["id"])["validation"]["best_step"] == 10

    # The worker published the best step (step 10) and kept the last (step 20) beside it.
    prefix = f"trainings/{job['id']}/lora/attempt-1"
    store.put_bytes(f"{prefix}/peft/adapter_model.safetensors", b"best-peft")
    store.put_bytes(f"{prefix}/lora.safetensors", b"best")
    store.put_bytes(f"{prefix}/last/peft/adapter_model.safetensors", b"last-peft")
    store.put_bytes(f"{prefix}/last/lora.safetensors", b"last")
    checkpoints = {
        "published": "best",
        "best": {"step": 10},
        "last": {
            "step": 20,
            "peft_prefix": f"{prefix}/last/peft",
            "comfyui_key": f"{prefix}/last/lora.safetensors",
        },
    }
    with Session() as s:
        lora_id = finish_training(
            s,
            job_id=job["id"],
            worker_id="w1",
            peft_prefix=f"{prefix}/peft",
            comfyui_key=f"{prefix}/lora.safetensors",
            rank=16,
            alpha=16.0,
            meta={"validation": summary, "checkpoints": checkpoints},
        )
    lora = client.get(f"/v1/loras/{lora_id}", headers=auth(alice)).json()
    assert lora["metadata"]["checkpoints"]["published"] == "best"

    def peft_zip(which=None):
        import io
        import zipfile

        q = f"&which={which}" if which else ""
        r = client.get(f"/v1/loras/{lora_id}/file?format=peft{q}", headers=auth(alice))
        assert r.status_code == 200, r.text
        return zipfile.ZipFile(io.BytesIO(r.content)).read("adapter_model.safetensors")

    assert peft_zip() == peft_zip("best") == b"best-peft"
    assert peft_zip("last") == b"last-peft"
    r = client.get(f"/v1/loras/{lora_id}/file?format=peft&which=middle", headers=auth(alice))
    assert r.status_code == 422 and "which" in r.text
    assert client.delete(f"/v1/loras/{lora_id}", headers=auth(alice)).status_code == 204
    assert not store.exists(f"{prefix}/last/lora.safetensors")  # the kept checkpoint goes with its LoRA
