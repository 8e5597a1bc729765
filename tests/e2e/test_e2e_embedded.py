"""`make serve`: the embedded default starts its own broker, SQLite, API and worker, and serves a generation;
a restart keeps the data and the API key."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
from e2e_helpers import start_embedded as start

from ops.broker import free_port
from ops.embedded import BUNDLED


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def generate(base: str, key: str) -> dict:
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    r = http.post(
        "/v1/generations", json={"prompt": "a red square", "width": 64, "height": 32, "steps": 2, "seed": 1}
    )
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 120
    while True:
        body = http.get(f"/v1/generations/{r.json()['id']}").json()
        if body["status"] in ("succeeded", "failed"):
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.3)
    assert body["status"] == "succeeded", body["error"]
    image = http.get(body["images"][0]["url"])
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    return body


def test_embedded_default_from_nothing_then_restart(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # No model at the configured path: the bundled one, or (a checkout without it) a tiny random one.
    proc, key, out = start(data, port, tmp_path / "no-model-here")
    try:
        if (BUNDLED / "config.json").is_file():
            assert f"using the bundled {BUNDLED}" in out
        else:
            assert (data / "models" / "o1-tiny-random" / "config.json").is_file()
        assert (data / "o1lora.db").is_file() and (data / "redis").is_dir()
        assert oct((data / "api_key").stat().st_mode & 0o777) == "0o600"
        first = generate(base, key)
    finally:
        assert stop(proc) == 0
    with httpx.Client() as c:  # everything it started is gone
        try:
            c.get(base + "/health", timeout=2)
            raise AssertionError("the API still answers after the launcher stopped")
        except httpx.TransportError:
            pass

    proc, key_again, _ = start(data, port, tmp_path / "no-model-here")
    try:
        assert key_again == key
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"})
        assert http.get(f"/v1/generations/{first['id']}").json()["status"] == "succeeded"
    finally:
        assert stop(proc) == 0
