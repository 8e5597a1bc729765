"""`make serve` stops what it started: its children (uvicorn, the Celery worker, redis-server) die with the
launcher even when it is SIGKILLed, and a SIGTERM in the middle of a generation ends the launcher within its
bound (under the 20 s after which supervisors SIGKILL), the generation put back in the queue."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from e2e_helpers import start_embedded

from ops.broker import free_port
from ops.embedded import STOP_GRACE_S


def children(pid: int) -> dict[int, str]:
    """Every live descendant of ``pid``: {pid: command line}."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent_of[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parent_of.items():
            if parent == p and child not in found and alive(child):
                found[child] = command_line(child)
                frontier.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone: it runs nothing and holds no port)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def kill_left(pids) -> None:
    for p in pids:
        if alive(p):
            os.kill(p, signal.SIGKILL)


def test_children_die_with_a_sigkilled_launcher(tmp_path):
    port = free_port()
    proc, _, _ = start_embedded(tmp_path / "data", port, tmp_path / "no-model-here")
    kids = children(proc.pid)
    try:
        names = " ".join(kids.values())
        assert "uvicorn" in names and "celery" in names and "redis-server" in names, kids
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        left = wait_gone(kids, timeout=10)
        assert not left, {p: kids[p] for p in left}
        print(f"children gone {time.monotonic() - t0:.1f} s after the launcher's SIGKILL")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            raise AssertionError("the API still answers after its launcher was killed")
        except httpx.TransportError:
            pass
    finally:
        kill_left(kids)


@pytest.mark.slow  # ~25 s: the embedded start, a generation, the grace
def test_sigterm_mid_generation_stops_everything_within_the_bound(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    proc, key, _ = start_embedded(data, port, tmp_path / "no-model-here")
    kids = children(proc.pid)
    try:
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        # Far longer than the grace on this CPU (and within the per-request cost bound of 2048^2 x 50 steps).
        r = http.post(
            "/v1/generations",
            json={"prompt": "a red square", "width": 512, "height": 512, "steps": 200, "num_images": 4, "seed": 1},
        )
        assert r.status_code == 202, r.text
        gen_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while http.get(f"/v1/generations/{gen_id}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        took = time.monotonic() - t0
        assert code == 0
        print(f"launcher exited {took:.1f} s after SIGTERM mid-generation")
        assert took < STOP_GRACE_S + 8 < 20, took
        left = wait_gone(kids, timeout=2)
        assert not left, {p: kids[p] for p in left}
        with sqlite3.connect(data / "o1lora.db") as db:
            status, worker = db.execute(
                "SELECT status, worker_id FROM generations WHERE id = ?", (gen_id,)
            ).fetchone()
        assert (status, worker) == ("queued", None)  # resumed at the next start, not after a heartbeat timeout
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_left(kids)
