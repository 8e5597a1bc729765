"""`o1lora` as a subprocess against the running embedded service: train (upload a folder, follow the SSE
stream, download the LoRA), generate, the API's errors, and Ctrl-C detaching from a training that goes on."""

from __future__ import annotations

import signal
import time
import zipfile

import httpx
from PIL import Image
from safetensors import safe_open

TRAIN = ["--trigger", "sks", "--rank", "4", "--alpha", "4", "--lr", "1e-3", "--resolution", "64", "--seed", "1"]


def api(cli) -> httpx.Client:
    return httpx.Client(base_url=cli.url, headers={"Authorization": f"Bearer {cli.key}"}, timeout=30)


def test_train_follows_to_the_end_and_downloads_the_lora_then_generate_with_it(cli, photos, tmp_path):
    out = cli.run(
        "train",
        str(photos),
        *TRAIN,
        "--steps",
        "6",
        "--sample-every",
        "3",
        "--sample-prompt",
        "sks, a red square",
        "--format",
        "comfyui",
        "-o",
        "loras/",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    lora_file = tmp_path / out.stdout.strip()  # a folder made for it, the service's file name
    assert lora_file.suffix == ".safetensors" and lora_file.parent == tmp_path / "loras"
    with safe_open(str(lora_file), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("diffusion_model.") and k.endswith("lora_A.weight") for k in keys), keys[:5]
    # The bar drew the steps, the loss and the ETA from the stream, and the previews were announced.
    assert "6/6" in out.stderr and "loss " in out.stderr and "ETA " in out.stderr
    assert "preview at step 3" in out.stderr and "preview at step 6" in out.stderr
    assert not list(tmp_path.rglob("*.part"))

    trainings = api(cli).get("/v1/trainings").json()["data"]
    job = next(t for t in trainings if t["status"] == "succeeded")
    assert job["progress"]["step"] == 6 and job["params"]["rank"] == 4 and job["params"]["resolution"] == 64
    lora_id = job["lora_id"]

    out = cli.run(
        "generate",
        "sks, a blue square",
        "--lora",
        f"{lora_id}:0.8",
        "-o",
        "blue.png",
        "--width",
        "96",
        "--height",
        "64",
        "--steps",
        "3",
        "--seed",
        "5",
        "--guidance",
        "2.5",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "blue.png"
    with Image.open(tmp_path / "blue.png") as image:
        assert image.format == "PNG" and image.size == (96, 64)
    assert "3/3" in out.stderr and "images 1/1" in out.stderr
    gen = api(cli).get("/v1/generations").json()["data"][0]
    assert gen["params"]["loras"] == [{"id": lora_id, "scale": 0.8}]
    assert gen["params"]["seed"] == 5 and gen["params"]["guidance"] == 2.5

    # status / list / download by the training's id (its LoRA) in another format
    status = cli.run("status", job["id"], cwd=tmp_path)
    assert status.returncode == 0 and "succeeded" in status.stdout and f"LoRA: {lora_id}" in status.stdout
    listed = cli.run("list", "loras", cwd=tmp_path)
    assert listed.returncode == 0 and lora_id in listed.stdout
    refused = cli.run("cancel", lora_id, cwd=tmp_path)
    assert refused.returncode == 2 and "only trainings and generations can be canceled" in refused.stderr
    peft = cli.run("download", job["id"], "--format", "peft", "-o", str(tmp_path / "style.zip"), cwd=tmp_path)
    assert peft.returncode == 0, peft.stderr
    names = zipfile.ZipFile(tmp_path / "style.zip").namelist()
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(names)


def test_api_errors_are_reported_with_the_service_message_and_a_failing_exit_code(cli, photos, tmp_path):
    out = cli.run(
        "generate", "a square", "--lora", "nosuchlora:0.5", "--width", "64", "--height", "64", cwd=tmp_path
    )
    assert out.returncode == 1
    assert "LoRA nosuchlora" in out.stderr and "HTTP 404 not_found" in out.stderr
    assert "field: loras[0].id (set by --lora)" in out.stderr
    assert not (tmp_path / "out.png").exists()

    # A training the service refuses (previews every 500 steps of a 10-step run) names the flag to change.
    out = cli.run("train", str(photos), *TRAIN, "--steps", "10", cwd=tmp_path)
    assert out.returncode == 1
    assert "sample_every (500) must not exceed steps (10)" in out.stderr and "HTTP 422 invalid" in out.stderr
    dataset_id = out.stderr.split("--dataset ")[1].split()[0]  # the hint to reuse the upload works
    out = cli.run(
        "train", "--dataset", dataset_id, *TRAIN, "--steps", "2", "--sample-every", "0", "--detach", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert api(cli).get(f"/v1/trainings/{out.stdout.strip()}").json()["dataset_id"] == dataset_id

    out = cli.run("status", "0123456789abcdef", cwd=tmp_path)
    assert out.returncode == 1 and "0123456789abcdef" in out.stderr

    bad_key = cli.run("--api-key", "wrong", "list", cwd=tmp_path)
    assert bad_key.returncode == 1 and "HTTP 401" in bad_key.stderr and "O1LORA_API_KEY" in bad_key.stderr


def test_ctrl_c_detaches_from_a_training_that_keeps_running(cli, photos, tmp_path):
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        proc = cli.start(
            "train", str(photos), *TRAIN, "--steps", "40", "--sample-every", "0", cwd=tmp_path, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 90
        while "loss " not in log.read_text():  # the bar is drawing live progress
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 130, text
    job_id = text.split("detached from training ")[1].split(":")[0]
    assert "keeps running" in text and f"o1lora cancel {job_id}" in text and f"status {job_id} --follow" in text
    http = api(cli)
    assert http.get(f"/v1/trainings/{job_id}").json()["status"] in ("queued", "running")  # not canceled

    # Re-attach: `status --follow` follows it to its end.
    again = cli.run("status", job_id, "--follow", cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr
    body = http.get(f"/v1/trainings/{job_id}").json()
    assert body["status"] == "succeeded" and body["progress"]["step"] == 40 and body["cancel_requested"] is False
    assert "40/40" in again.stderr
