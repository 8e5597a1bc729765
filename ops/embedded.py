"""The whole service on one machine with nothing to install: `make serve` runs

    python -m ops.embedded [--host 127.0.0.1] [--port 8000]

It starts a Redis server of its own (ops/broker.py: the broker and the live-event channel), brings the
SQLite database under the data directory (./data, or O1LORA_DATA_DIR) to the newest schema, makes sure there
is a base model (the configured one, else the bundled models/o1-shapes, else a tiny random one written once
under the data directory),
creates the owner `default` with an API key the first time, then runs the API and one worker on both
queues, restarting the worker if it dies (its job resumes from the last checkpoint). Ctrl-C or SIGTERM stops
it all within about STOP_GRACE_S seconds (a job the worker could not hand back in time is put back in the
queue, and resumes at the next start); a launcher killed outright takes its children with it.

The key is kept in <data_dir>/api_key (mode 600) so that later starts print the same one; delete the file to
get a new key.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ops.broker import EmbeddedRedis
from ops.launcher import Launcher, wait_http
from service.settings import BUNDLED_MODEL as BUNDLED
from service.settings import get_settings

# How long the API and the worker get to stop on their own: a training hands its job back at its next step
# well within it. Kept under the 20 s that supervisors commonly wait before they SIGKILL the launcher.
STOP_GRACE_S = 10.0


def ensure_model(model_path: Path, data_dir: Path) -> Path:
    """The configured model folder when it holds a checkpoint, else the bundled one, else a tiny random one
    (written once under the data folder, so that a checkout without model files still runs end to end)."""
    for candidate in (model_path, BUNDLED):
        if (candidate / "config.json").is_file():
            if candidate != model_path:
                print(f"no model at {model_path}; using the bundled {candidate}", flush=True)
            return candidate
    tiny = (data_dir / "models" / "o1-tiny-random").resolve()
    if not (tiny / "config.json").is_file():
        print(
            f"no model at {model_path} nor {BUNDLED}; writing a tiny random one to {tiny} (its images are noise)",
            flush=True,
        )
        subprocess.run([sys.executable, "-m", "core.tiny", str(tiny)], check=True)
    return tiny


def ensure_api_key(database_url: str, data_dir: Path) -> str:
    """The saved key of the `default` owner while it still works, else a new one (creating the owner)."""
    from sqlalchemy import select

    from db.models import Owner
    from db.owners import create_api_key, create_owner, owner_for_key
    from db.session import make_sessionmaker

    key_file = data_dir / "api_key"
    maker = make_sessionmaker(database_url)
    try:
        with maker() as s:
            if key_file.is_file():
                key = key_file.read_text().strip()
                if owner_for_key(s, key=key) is not None:
                    return key
            owner = s.scalar(select(Owner).where(Owner.name == "default")) or create_owner(s, name="default")
            key = create_api_key(s, owner_id=owner.id)
    finally:
        maker.kw["bind"].dispose()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ops.embedded", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)

    from db.migrate import upgrade

    s = get_settings()
    data_dir = s.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    database_url = s.resolved_database_url
    model = ensure_model(s.model_path, data_dir)
    upgrade(database_url)
    key = ensure_api_key(database_url, data_dir)

    broker = EmbeddedRedis(data_dir / "redis").start()
    env = {
        "O1LORA_DATA_DIR": str(data_dir),
        "O1LORA_DATABASE_URL": database_url,
        "O1LORA_BROKER_URL": broker.url,
        "O1LORA_REDIS_URL": broker.url,
        "O1LORA_ARTIFACT_DIR": str(s.resolved_artifact_dir),
        "O1LORA_MODEL_PATH": str(model),
    }
    procs = Launcher(env)

    def on_signal(signum, _frame):
        # Interrupt whatever runs (also the wait for the API at start); ignore repeats while stopping.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        api = procs.start_api(args.host, args.port)
        procs.start_worker("worker")
        url = f"http://{args.host}:{args.port}"
        wait_http(url + "/health", timeout=120, proc=api)
        print(
            f"\no1lora is running at {url}  (docs: {url}/docs)\nAPI key: {key}\n"
            f"data: {data_dir}   model: {model}\nCtrl-C stops it.\n",
            flush=True,
        )
        while True:
            time.sleep(0.5)
            if api.poll() is not None:
                print(f"the API exited with code {api.returncode}; stopping", file=sys.stderr)
                return 1
            if procs.procs["worker"].poll() is not None:
                print(
                    "the worker exited; restarting it (its job resumes from the last checkpoint)",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(2)  # a worker that dies at start must not spin the machine
                procs.start_worker("worker")
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        worker = procs.procs.get("worker")
        procs.stop_all(timeout=STOP_GRACE_S)
        if worker is not None and worker.returncode == -signal.SIGKILL:
            release_jobs(database_url, worker.pid)
        broker.stop()


def release_jobs(database_url: str, worker_pid: int) -> None:
    """Put the jobs of a worker that had to be killed (a generation does not stop at a step) back in the
    queue, so that the next start resumes them at once instead of after a heartbeat timeout."""
    import socket

    from db.jobs import hand_back_all
    from db.session import make_sessionmaker

    maker = make_sessionmaker(database_url)
    try:
        with maker() as s:
            ids = hand_back_all(s, worker_id=f"{socket.gethostname()}:{worker_pid}")
    finally:
        maker.kw["bind"].dispose()
    if ids:
        print(f"put back in the queue (resumed at the next start): {', '.join(ids)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
