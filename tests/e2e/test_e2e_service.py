"""The service end to end over HTTP, with a real API process, a real Celery worker process, PostgreSQL and
Redis: upload -> train -> previews -> generate with the LoRA -> download; cancel; SIGKILL + resume."""

from __future__ import annotations

import io
import json
import signal
import threading
import time
import zipfile

from e2e_helpers import dataset_files
from PIL import Image
from safetensors.torch import load

from db.training import get_training

TRAIN = {
    "trigger": "sks",
    "rank": 4,
    "alpha": 4.0,
    "learning_rate": 1e-3,
    "resolution": 64,
    "seed": 1,
    "sample_every": 0,
}


def upload(svc) -> str:
    r = svc.http.post("/v1/datasets", files=dataset_files(), data={"name": "squares", "resolution": "64"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def submit(svc, dataset_id: str, **kw) -> str:
    r = svc.http.post("/v1/trainings", json={"dataset_id": dataset_id, **TRAIN, **kw})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def png(svc, url: str) -> Image.Image:
    r = svc.http.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:200]
    return Image.open(io.BytesIO(r.content))


def sse_events(svc, path: str, out: list, timeout: float = 120.0) -> None:
    """Collect (event, data) pairs from an SSE stream until it ends."""
    with svc.http.stream("GET", path, timeout=timeout) as r:
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))


def test_upload_train_generate_download(service):
    svc = service
    dataset_id = upload(svc)
    job_id = submit(svc, dataset_id, steps=6, sample_every=3, sample_prompts=["sks, a red square"])
    events: list = []
    watcher = threading.Thread(target=sse_events, args=(svc, f"/v1/trainings/{job_id}/events", events))
    watcher.start()

    job = svc.poll(f"/v1/trainings/{job_id}", lambda b: b["status"] in ("succeeded", "failed", "canceled"))
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["step"] == 6 and job["progress"]["loss"] > 0 and job["attempt"] == 1
    assert [(p["step"], p["index"]) for p in job["previews"]] == [(3, 0), (6, 0)]
    preview = png(svc, job["previews"][-1]["url"])
    assert preview.size == (128, 64)  # adapter on | off, side by side, at the 64 px resolution
    lora_id = job["lora_id"]
    assert lora_id

    watcher.join(30)
    kinds = [e for e, _ in events]
    assert kinds[0] == "snapshot" and kinds[-1] == "snapshot"
    assert "progress" in kinds and "preview" in kinds
    assert events[-1][1]["status"] == "succeeded"  # the stream ends on the final DB state
    steps = [d["step"] for e, d in events if e == "progress"]
    assert steps == sorted(steps) and steps[-1] == 6
    assert [d["url"] for e, d in events if e == "preview"][-1] == job["previews"][-1]["url"]

    r = svc.http.post(
        "/v1/generations",
        json={
            "prompt": "sks, a blue square",
            "loras": [{"id": lora_id, "scale": 1.0}],
            "width": 96,
            "height": 64,
            "steps": 3,
            "seed": 5,
            "num_images": 2,
        },
    )
    assert r.status_code == 202, r.text
    gen = svc.poll(f"/v1/generations/{r.json()['id']}", lambda b: b["status"] in ("succeeded", "failed"))
    assert gen["status"] == "succeeded", gen["error"]
    assert len(gen["images"]) == 2
    for im in gen["images"]:
        assert png(svc, im["url"]).size == (96, 64)

    comfy = svc.http.get(f"/v1/loras/{lora_id}/file", params={"format": "comfyui"})
    assert comfy.status_code == 200
    tensors = load(comfy.content)
    assert any(k.startswith("diffusion_model.") and k.endswith("lora_A.weight") for k in tensors)
    peft = svc.http.get(f"/v1/loras/{lora_id}/file", params={"format": "peft"})
    assert peft.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(peft.content)).namelist()
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(names)


def test_cancel_a_running_training(service):
    svc = service
    job_id = submit(svc, upload(svc), steps=3000)
    svc.poll(f"/v1/trainings/{job_id}", lambda b: b["progress"]["step"] >= 2)
    r = svc.http.post(f"/v1/trainings/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    asked_at = svc.http.get(f"/v1/trainings/{job_id}").json()["progress"]["step"]
    job = svc.poll(f"/v1/trainings/{job_id}", lambda b: b["status"] != "running", timeout=60)
    assert job["status"] == "canceled" and job["lora_id"] is None
    with svc.sessions() as s:
        row = get_training(s, job_id=job_id)
    # Stopped soon after the request: the flag is polled off the training thread every progress interval
    # (0.2 s here), and this tiny model runs up to ~100 steps/s on the CPU, so "soon" is a fraction of a
    # second, i.e. tens of steps (33 seen once on a busy machine). The bound leaves room for a starved CI
    # machine and still tells "stopped" from "ran on to the 3000".
    assert asked_at <= row.checkpoint_step <= asked_at + 300 < 3000
    print(f"cancel asked at step {asked_at}; stopped at step {row.checkpoint_step}")
    assert (svc.store_root / row.checkpoint_path / "weights.safetensors").is_file()


def test_sigkill_mid_training_then_a_new_worker_resumes_from_the_checkpoint(service):
    svc = service
    dataset_id = upload(svc)
    # Checkpoints every 4 steps, and long enough that it cannot finish between the poll and the SIGKILL.
    first = submit(svc, dataset_id, steps=120, checkpoint_every=4)
    second = submit(svc, dataset_id, steps=4)  # waits in the queue behind it: must not be lost
    svc.poll(f"/v1/trainings/{first}", lambda b: b["status"] == "running")
    deadline = time.monotonic() + 120
    while True:
        with svc.sessions() as s:
            row = get_training(s, job_id=first)
        if (row.checkpoint_step or 0) >= 8:
            break
        assert time.monotonic() < deadline, svc.launcher.log("w1")[-3000:]
        time.sleep(0.1)
    svc.launcher.kill("w1")  # SIGKILL: no cleanup, no ack, no final write
    with svc.sessions() as s:
        dead = get_training(s, job_id=first)
    assert dead.status == "running" and dead.step < 120
    killed_at_checkpoint = dead.checkpoint_step

    svc.start_worker("w2")
    done = svc.poll(f"/v1/trainings/{first}", lambda b: b["status"] in ("succeeded", "failed"), timeout=180)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 2 and done["progress"]["step"] == 120  # one resume, no third start
    log = svc.launcher.log("w2")
    assert f"resuming from trainings/{first}/checkpoints/attempt-1/step-{killed_at_checkpoint:06d}" in log
    print(f"SIGKILL at step {dead.step}; resumed from the step-{killed_at_checkpoint} checkpoint")
    other = svc.poll(f"/v1/trainings/{second}", lambda b: b["status"] in ("succeeded", "failed"), timeout=120)
    assert other["status"] == "succeeded" and other["attempt"] == 1


def test_sigterm_hands_the_training_back_at_once(service):
    """`docker compose stop`: a warm shutdown stops the training at a step, checkpoints it and re-queues it
    right away (no heartbeat timeout), and the next worker resumes it."""
    svc = service
    for name in [n for n, p in svc.launcher.procs.items() if n.startswith("w") and p.poll() is None]:
        svc.launcher.stop(name)
    svc.start_worker("w-term")
    job_id = submit(svc, upload(svc), steps=100)  # long enough not to end before the SIGTERM lands
    svc.poll(f"/v1/trainings/{job_id}", lambda b: b["progress"]["step"] >= 5)
    svc.launcher.kill("w-term", signal.SIGTERM)  # returns once the worker process has exited
    with svc.sessions() as s:
        row = get_training(s, job_id=job_id)
    assert (row.status, row.worker_id) == ("queued", None) and 5 <= row.checkpoint_step < 100
    assert row.step == row.checkpoint_step  # the row says exactly where the resume starts
    assert "re-queued" in svc.launcher.log("w-term")
    svc.start_worker("w-next")
    done = svc.poll(f"/v1/trainings/{job_id}", lambda b: b["status"] not in ("running", "queued"), timeout=300)
    assert (done["status"], done["attempt"], done["progress"]["step"]) == ("succeeded", 2, 100)
