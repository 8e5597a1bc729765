"""schemathesis over the whole OpenAPI document (bounded: few examples per operation, a time limit), against the
app on loopback: no server error, no undocumented status, no response that violates its schema, no refused
schema-valid request that the schema could have described.

    .venv/bin/python -m pytest tests/api/test_api_schemathesis.py -q -m slow      # or: make schemathesis
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_schemathesis_finds_no_failure(tmp_path):
    report = tmp_path / "report.json"
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "schemathesis_run.py"),
            "--max-examples",
            "5",
            "--max-time",
            "120",
            "--keep-report",
            str(report),
        ],
        cwd=HERE.parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    doc = json.loads(report.read_text())
    assert doc["failures"] == [] and doc["errors"] == [], out.stdout[-4000:]
    assert doc["operations"]["tested"] == doc["operations"]["selected"] and doc["test_cases"]["generated"] > 100
    assert out.returncode == 0, out.stdout[-4000:]
