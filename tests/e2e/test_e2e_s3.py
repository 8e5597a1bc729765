"""Workers on three "machines" that share nothing but PostgreSQL, Redis and an S3 bucket (moto's real S3 server):
each worker is a process of its own with a data folder of its own, and the store is O1LORA_STORE_URL. A training
started on machine A is SIGKILLed, resumed on machine B from the checkpoint in the bucket, and its LoRA is then
used by a generation on machine C, which fetches it from the bucket into its own cache.

    .venv/bin/python -m pytest tests/e2e/test_e2e_s3.py -q -m slow
"""

from __future__ import annotations

import io
import time

import pytest
from e2e_helpers import dataset_files
from PIL import Image
from s3_helpers import client, new_bucket, object_keys, store_env

from db.training import get_training
from service.s3_store import MANIFEST

pytestmark = pytest.mark.slow  # three worker processes and an API on 2 cores: about a minute

TRAIN = {"trigger": "sks", "rank": 4, "alpha": 4.0, "learning_rate": 1e-3, "resolution": 64, "seed": 1}


@pytest.fixture(scope="module")
def bucket(s3_server):
    return new_bucket(s3_server)


@pytest.fixture(scope="module")
def machines(tmp_path_factory):
    """The data folder of each machine: the API's, and A, B and C for the workers."""
    return {name: tmp_path_factory.mktemp(f"machine-{name}") for name in ("api", "a", "b", "c")}


@pytest.fixture(scope="module")
def service_env(s3_server, bucket, machines):
    return {**store_env(s3_server, bucket), "O1LORA_DATA_DIR": str(machines["api"])}


@pytest.fixture(scope="module")
def first_worker_env(machines):
    return {"O1LORA_DATA_DIR": str(machines["a"])}  # w1 is machine A, training only... and killed


def cached(machine, kind: str) -> list:
    """The entries of a machine's store cache ("files" or "dirs")."""
    root = machine / "cache" / kind
    return sorted(root.iterdir()) if root.is_dir() else []


def test_a_training_killed_on_one_machine_resumes_on_another_and_a_third_generates_with_its_lora(
    service, s3_server, bucket, machines
):
    svc = service
    r = svc.http.post("/v1/datasets", files=dataset_files(), data={"name": "squares", "resolution": "64"})
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    r = svc.http.post("/v1/trainings", json={"dataset_id": dataset_id, **TRAIN, "steps": 40, "sample_every": 0})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    # Machine A trains until two checkpoints (every 4 steps) are in the bucket, then dies without a word.
    deadline = time.monotonic() + 120
    while True:
        with svc.sessions() as s:
            row = get_training(s, job_id=job_id)
        if (row.checkpoint_step or 0) >= 8:
            break
        assert time.monotonic() < deadline, svc.launcher.log("w1")[-3000:]
        time.sleep(0.1)
    svc.launcher.kill("w1")  # SIGKILL
    with svc.sessions() as s:
        dead = get_training(s, job_id=job_id)
    assert dead.status == "running" and dead.step < 40
    checkpoint = f"o1lora/{dead.checkpoint_path}"
    assert set(object_keys(s3_server, bucket, checkpoint)) >= {
        f"{checkpoint}/weights.safetensors",
        f"{checkpoint}/state.pt",
        f"{checkpoint}/{MANIFEST}",  # written last: the checkpoint is whole
    }

    # Machine B (training queue only) has never seen the job: its reconciler takes the stale row over and
    # resumes from the checkpoint it fetches from the bucket.
    svc.start_worker("w2", queues="train", env={"O1LORA_DATA_DIR": str(machines["b"])})
    done = svc.poll(f"/v1/trainings/{job_id}", lambda b: b["status"] in ("succeeded", "failed"), timeout=180)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 2 and done["progress"]["step"] == 40
    log_b = svc.launcher.log("w2")
    assert f"resuming from {dead.checkpoint_path} (step {dead.checkpoint_step})" in log_b
    assert f"store cache: fetched {dead.checkpoint_path}/" in log_b
    assert f"store cache: fetched datasets/{dataset_id}/" in log_b
    assert len(cached(machines["b"], "dirs")) == 2  # the dataset and the checkpoint, one copy each
    lora_id = done["lora_id"]

    # Machine C (generation queue only) loads the LoRA from the bucket into its own cache.
    svc.start_worker("w3", queues="generate", env={"O1LORA_DATA_DIR": str(machines["c"])})
    r = svc.http.post(
        "/v1/generations",
        json={
            "prompt": "sks, a blue square",
            "loras": [{"id": lora_id, "scale": 1.0}],
            "width": 96,
            "height": 64,
            "steps": 3,
            "seed": 5,
        },
    )
    assert r.status_code == 202, r.text
    gen = svc.poll(f"/v1/generations/{r.json()['id']}", lambda b: b["status"] in ("succeeded", "failed"))
    assert gen["status"] == "succeeded", gen["error"]
    image = svc.http.get(gen["images"][0]["url"])  # streamed from the bucket by the API
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (96, 64)
    log_c = svc.launcher.log("w3")
    lora_key = f"trainings/{job_id}/lora/attempt-2/lora.safetensors"
    assert f"store cache: fetched {lora_key}" in log_c
    (entry,) = cached(machines["c"], "files")
    stored = client(s3_server).get_object(Bucket=bucket, Key=f"o1lora/{lora_key}")["Body"].read()
    assert (entry / "lora.safetensors").read_bytes() == stored

    # Nothing went through a shared folder: no machine has a local artifact store, each has only its own cache.
    assert not any((machines[m] / "artifacts").exists() for m in machines)
    assert len(cached(machines["a"], "dirs")) == 1  # A: the dataset it started from
    assert log_c.count("store cache: fetched") == 1 and not cached(machines["c"], "dirs")  # C: the LoRA only
