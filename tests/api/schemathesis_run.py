"""schemathesis over the OpenAPI document, against the app on loopback (embedded SQLite default in a temp data
dir, an owner with a key; job messages go to the local Redis, db 13, under a key prefix of this run that is
deleted afterwards, so no worker ever sees them).

    .venv/bin/python tests/api/schemathesis_run.py [--max-examples 15] [--max-time 300] [--seed 1]   # make schemathesis

Prints schemathesis' own summary and, last, one JSON line of counts (test cases, failures by code); exits
non-zero when any check failed.
The ``positive_data_acceptance`` check is configured per operation in schemathesis.toml (next to this file):
an upload whose bytes are random can never be a valid image or LoRA, and a generation over the cost bound is
refused with a documented 422, although the schema cannot say either.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402
import uvicorn  # noqa: E402

from api.main import create_app  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.owners import create_api_key, create_owner  # noqa: E402
from db.session import make_sessionmaker  # noqa: E402
from jobqueue.enqueue import Enqueuer  # noqa: E402
from service.settings import Settings  # noqa: E402

sys.path.insert(0, str(HERE))
from api_helpers import make_celery  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/13"


@contextlib.contextmanager
def serving(app):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def summary(report: Path) -> dict:
    """The counts of schemathesis' JSON run report: test cases, and failures by code (ST101 server error ...)."""
    doc = json.loads(report.read_text())
    return {
        "test_cases": doc["test_cases"],
        "operations_tested": doc["operations"]["tested"],
        "failures": {f"{f['code']} {f['title']}": f["count"] for f in doc["failures"]},
        "errors": {e["title"]: e["count"] for e in doc["errors"]},
        "warnings": doc["warnings"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-examples", type=int, default=15)
    ap.add_argument("--max-time", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep-report", type=Path, help="copy schemathesis' JSON run report here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="o1lora-schemathesis-") as tmp:
        prefix = f"o1lora-schemathesis-{uuid.uuid4().hex[:8]}:"
        settings = Settings(data_dir=Path(tmp) / "data", broker_url=REDIS_URL, dataset_min_side=16)
        upgrade(settings.resolved_database_url)
        with make_sessionmaker(settings.resolved_database_url)() as s:
            key = create_api_key(s, owner_id=create_owner(s, name="schemathesis").id)
        report = Path(tmp) / "report.json"
        enqueuer = Enqueuer(lambda: make_celery(REDIS_URL, prefix))
        with serving(create_app(settings, enqueuer=enqueuer)) as base:
            cmd = [
                str(Path(sys.executable).with_name("schemathesis")),
                "--config-file",
                str(HERE / "schemathesis.toml"),
                "run",
                f"{base}/openapi.json",
                "--checks",
                "all",
                "-H",
                f"Authorization: Bearer {key}",
                "--max-examples",
                str(args.max_examples),
                "--max-time",
                str(args.max_time),
                "--seed",
                str(args.seed),
                "--workers",
                "1",
                "--request-timeout",
                "30",
                "--report",
                "json",
                "--report-json-path",
                str(report),
                "--no-color",
            ]
            try:
                rc = subprocess.run(cmd, cwd=tmp).returncode
            finally:
                r = redis.Redis.from_url(REDIS_URL)
                for k in r.scan_iter(f"{prefix}*"):
                    r.delete(k)
        result = summary(report) if report.exists() else {}
        if args.keep_report:
            shutil.copy(report, args.keep_report)
    print("summary:", json.dumps(result, sort_keys=True))
    return rc


if __name__ == "__main__":
    sys.exit(main())
