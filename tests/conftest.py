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
