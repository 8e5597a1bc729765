"""Start and stop the service's processes: the API (uvicorn) and Celery workers, with one environment.

Used by the embedded default (worker/embedded.py) and by the end-to-end tests, which also kill and restart
workers through it. Each child gets its own process group, so a kill reaches the whole child and nothing
else.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO


class Launcher:
    def __init__(self, env: dict[str, str], log_dir: Path | None = None, cwd: Path | None = None):
        """`env`: O1LORA_* values for the children (added to this process's environment)."""
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.cwd = cwd or Path(__file__).resolve().parents[1]
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list[IO] = []

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        out: IO | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")
            self._logs.append(out)
        proc = subprocess.Popen(args, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT if out else None, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_api(self, host: str = "127.0.0.1", port: int = 8000, name: str = "api") -> subprocess.Popen:
        return self._spawn(name, [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", host,
                                  "--port", str(port), "--log-level", "warning"])

    def start_worker(self, name: str = "worker", queues: str = "train,generate") -> subprocess.Popen:
        return self._spawn(name, [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
                                  "-Q", queues, "--hostname", f"{name}@%h", "--loglevel", "INFO",
                                  "--without-gossip", "--without-mingle"])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a child's whole process group (SIGKILL: a crash, with no chance to clean up)."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)

    def stop(self, name: str, timeout: float = 20.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        for f in self._logs:
            f.close()
        self._logs.clear()

    def log(self, name: str) -> str:
        """A child's log so far (when logging to files); tests print it on failure."""
        path = self.log_dir / f"{name}.log" if self.log_dir else None
        return path.read_text(errors="replace") if path and path.is_file() else ""


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Until `url` answers (any HTTP status), or TimeoutError; fails early when `proc` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before answering {url}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
