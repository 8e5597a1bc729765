"""The client's parts that need no service: the SSE reader, file names from Content-Disposition, the
console script, and what the command says when there is no key or nothing answers."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

from client.api import _attachment_name
from client.sse import Event, parse_events

REPO = Path(__file__).resolve().parents[2]


def test_sse_events_with_comments_multiline_data_and_a_cut_last_event():
    lines = [
        "event: snapshot",
        'data: {"status": "running",',
        'data:  "step": 3}',
        "",
        ": keepalive",
        "",
        "event: progress",
        'data: {"step": 4}',
        "",
        "event: progress",
        'data: {"step": 5',
    ]
    assert list(parse_events(lines)) == [
        Event("snapshot", {"status": "running", "step": 3}),
        Event("progress", {"step": 4}),
    ]


def test_download_names_are_bare_file_names():
    assert _attachment_name('attachment; filename="sks-comfyui.safetensors"', "file") == "sks-comfyui.safetensors"
    assert _attachment_name("attachment; filename*=utf-8''st%C3%BCck-peft.zip", "file") == "stück-peft.zip"
    assert _attachment_name('attachment; filename="../../etc/passwd"', "file") == "passwd"
    assert _attachment_name('attachment; filename=".."', "3") == "3"
    assert _attachment_name(None, "0") == "0"


def test_the_console_script_points_at_the_cli():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["o1lora"].split(":")
    assert callable(getattr(importlib.import_module(module), func))


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        env={"PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_key_and_no_service_are_clear_errors():
    out = run("list", env={})
    assert out.returncode == 2 and "O1LORA_API_KEY" in out.stderr
    from ops.broker import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = run("status", "abc", env={"O1LORA_URL": url, "O1LORA_API_KEY": "k"})
    assert out.returncode == 3 and f"cannot reach the o1lora service at {url}" in out.stderr
    out = run("--url", url, "--api-key", "k", "generate", "x", "--lora", ":2", env={})
    assert out.returncode == 2 and "expected ID or ID:SCALE" in out.stderr
