"""The `o1lora` command against the embedded service (`make serve`: its own Redis, SQLite, API and a Celery
worker) on a tiny model, run as a subprocess the way a person runs it. One service for the session: starting
one costs ~15 s of the 2 cores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))  # e2e_helpers: tests/ folders are not packages

from e2e_helpers import dataset_files, start_embedded  # noqa: E402


class Cli:
    def __init__(self, url: str, key: str):
        self.url, self.key = url, key

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("O1LORA_")}
        env.update(O1LORA_URL=self.url, O1LORA_API_KEY=self.key, PYTHONPATH=str(REPO))
        return env

    def start(self, *args: str, cwd: Path, stderr) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "client.cli", *args],
            cwd=cwd,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )

    def run(self, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "client.cli", *args],
            cwd=cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@contextmanager
def embedded_cli(root: Path, model: Path):
    from ops.broker import free_port

    port = free_port()
    proc, key, _ = start_embedded(root / "data", port, model)
    try:
        yield Cli(f"http://127.0.0.1:{port}", key)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    from core.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("cli-service")
    write_tiny_checkpoint(root / "tiny")
    with embedded_cli(root, root / "tiny") as c:
        yield c


@pytest.fixture(scope="module")
def bundled_cli(tmp_path_factory):
    """The service on the bundled model, whose default training preset is "bundled" (the session's runs a tiny
    model, which has none); ~15 s to start, so only the tests of that default ask for it."""
    from service.settings import BUNDLED_MODEL

    with embedded_cli(tmp_path_factory.mktemp("cli-bundled"), BUNDLED_MODEL) as c:
        yield c


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of four captioned PNGs, as a person would point `o1lora train` at."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for _, (name, content, _) in dataset_files():
        (folder / name).write_bytes(content)
    return folder


class DroppingProxy:
    """A TCP forwarder in front of the service whose open connections can be cut at will: what a network
    drop or a restarted load balancer does to a long SSE stream."""

    def __init__(self, target_port: int):
        import socket
        import threading

        self.target_port, self.conns, self.lock = target_port, [], threading.Lock()
        self.accepted = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.conns += [client, upstream]
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def drop_all(self) -> None:
        import socket

        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.drop_all()


@pytest.fixture
def dropping_proxy(cli):
    proxy = DroppingProxy(int(cli.url.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()
