"""Start and stop the service's processes: the API (uvicorn) and Celery workers, with one environment.

Used by the embedded default (ops/embedded.py) and by the end-to-end tests, which also kill and restart
workers through it. Each child gets its own process group, so a kill reaches the whole child and nothing
else; and each dies with the launcher (`die_with_parent`), so that a launcher killed with SIGKILL (or
crashed) leaves no API or worker running on, unseen.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Callable

PR_SET_PDEATHSIG = 1

# Celery's worker-to-worker chatter, off: gossip (events between workers), mingle (a sync of revoked ids at
# start) and the event heartbeat. Nothing here reads them (a job's liveness is its row's heartbeat, read by the
# reconciler; a revoke is only a hint, the claim is conditional), and on a Redis loss their event connection
# is what logs a traceback while the consumer reconnects. docker-compose.yml starts its workers with the same.
WORKER_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A Popen ``preexec_fn``: the kernel sends the child ``sig`` when the process that starts it dies, even
    by SIGKILL (Linux's PR_SET_PDEATHSIG; elsewhere nothing happens). SIGTERM, not SIGKILL: a worker then
    stops as on any warm shutdown (a training hands its job back at the next step), Redis flushes its file.

    Call Popen from the thread that lives as long as the launcher (the main thread): the signal comes when
    the starting *thread* exits."""
    parent = os.getpid()

    def preexec() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the launcher died between fork and prctl: nobody would signal us
            os.kill(os.getpid(), sig)

    return preexec


class Launcher:
    def __init__(self, env: dict[str, str], log_dir: Path | None = None, cwd: Path | None = None):
        """`env`: O1LORA_* values for the children (added to this process's environment)."""
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.cwd = cwd or Path(__file__).resolve().parents[1]
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list[IO] = []

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        out: IO | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")
            self._logs.append(out)
        proc = subprocess.Popen(
            args,
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self.procs[name] = proc
        return proc

    def start_api(self, host: str = "127.0.0.1", port: int = 8000, name: str = "api") -> subprocess.Popen:
        # A bounded graceful shutdown: open SSE streams must not hold a stopping API up.
        return self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "api.main:create_app",
                "--host",
                host,
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--timeout-graceful-shutdown",
                "3",
            ],
        )

    def start_worker(
        self, name: str = "worker", queues: str = "train,generate", env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """`env`: O1LORA_* values of this worker only (its own data folder: a worker on another machine)."""
        return self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "-Q",
                queues,
                "--hostname",
                f"{name}@%h",
                "--loglevel",
                "INFO",
                *WORKER_FLAGS,
            ],
            env,
        )

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

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every child at once, SIGKILL those still running ``timeout`` s later: stopping takes at most
        about ``timeout`` s, whatever runs (one by one, a worker in a long generation and the API each took
        the whole timeout, and whoever sent the launcher SIGTERM killed it first, leaving its children)."""
        running = {name: p for name, p in self.procs.items() if p.poll() is None}
        for p in running.values():
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in running.values():
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait()
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()

    def log(self, name: str) -> str:
        """A child's log so far (when logging to files); tests print it on failure."""
        path = self.log_dir / f"{name}.log" if self.log_dir else None
        return path.read_text(errors="replace") if path and path.is_file() else ""


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


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
