"""Shared test fixtures: where the conformance data lives, and test-wide torch settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def conformance_dir() -> Path:
    """The official-code goldens; missing data is an error, not a skip (see ../shared/conformance/README.md)."""
    candidates = [
        os.environ.get("O1LORA_CONFORMANCE", ""),
        REPO.parent / "shared" / "conformance",
        Path("/work/shared/conformance"),
    ]
    for c in candidates:
        if c and (Path(c) / "tiny_checkpoint" / "config.json").is_file():
            return Path(c)
    raise FileNotFoundError(f"conformance data not found; set O1LORA_CONFORMANCE (tried {candidates})")


@pytest.fixture(scope="session")
def conformance() -> Path:
    return conformance_dir()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server for the session: moto's standalone server, a process of its own on a free loopback port
    (like any S3 endpoint: the tests' memory and the server's stay apart). Its URL."""
    import subprocess
    import sys

    from ops.broker import free_port
    from ops.launcher import die_with_parent, wait_http

    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent(),
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=60, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on that server (its name)."""
    from s3_helpers import new_bucket

    return new_bucket(s3_server)
