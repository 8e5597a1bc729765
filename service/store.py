"""Artifact store: dataset files, checkpoints, LoRA files, previews and generated images, addressed by key.

Keys are relative '/'-separated paths such as ``datasets/<id>/img_001.png`` or ``loras/<id>/lora.safetensors``.
``LocalStore`` keeps them under one folder and writes atomically (temp file in the same folder + rename), so a
reader never sees half a file. ``S3Store`` (service/s3_store.py) keeps them in an S3-compatible bucket, for
machines that share no filesystem; ``make_store(settings)`` (service/stores.py) picks one from
``O1LORA_STORE_URL``. Workers read a remote store through their local cache (service/store_cache.py).

    store = make_store(settings)        # LocalStore(settings.resolved_artifact_dir) unless O1LORA_STORE_URL is set
    store.put_bytes("generations/abc/0.png", png)
    with store.open("generations/abc/0.png") as f: ...
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO, Iterable

# Any file name a user may upload (unicode included), but no separators, control characters or 255+ bytes.
_KEY_PART = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,255}$")


class InvalidKey(ValueError):
    pass


def check_key(key: str) -> str:
    """A key must be relative, '/'-separated, without '..' or odd characters; returns it unchanged."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or not _KEY_PART.match(p) for p in parts):
        raise InvalidKey(f"invalid artifact key {key!r}")
    return key


class ArtifactStore(ABC):
    """What api and worker need from a store. Every write is all-or-nothing."""

    # True when keys are files on this machine: local_path and fetch_dir hand them out without a copy, and a
    # worker needs no cache of its own.
    is_local = False

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_file(self, key: str, src: Path) -> None: ...

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Binary reader; FileNotFoundError when the key does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a folder-like prefix), sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under ``prefix`` (or the key itself); missing is fine."""

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        """Write chunks (an upload being read) without holding them all in memory."""
        with tempfile.NamedTemporaryFile() as tmp:
            for c in chunks:
                tmp.write(c)
            tmp.flush()
            self.put_file(key, Path(tmp.name))

    def local_path(self, key: str) -> Path | None:
        """A local file holding the key when the store has one (lets the API stream it without a copy)."""
        return None

    def put_dir(self, prefix: str, src_dir: Path) -> list[str]:
        """Upload every file under ``src_dir`` to ``prefix/<relative path>``; returns the keys."""
        keys = []
        for path in sorted(p for p in Path(src_dir).rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(src_dir).as_posix()}"
            self.put_file(key, path)
            keys.append(key)
        return keys

    def fetch_dir(self, prefix: str, dest: Path) -> Path:
        """A local folder with every key under ``prefix`` (copied into ``dest`` unless the store is local)."""
        for key in self.list(prefix):
            out = Path(dest) / key[len(prefix) + 1 :]
            out.parent.mkdir(parents=True, exist_ok=True)
            with self.open(key) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return Path(dest)

    def content_id(self, key: str) -> str:
        """A name of the key's content (the same bytes, the same name): what a cache of copies is keyed by.
        FileNotFoundError when the key does not exist. Remote stores only."""
        raise NotImplementedError(f"{type(self).__name__} is local: read local_path instead")

    def dir_content_id(self, prefix: str) -> str:
        """content_id of the whole folder under ``prefix``. Remote stores only."""
        raise NotImplementedError(f"{type(self).__name__} is local: read fetch_dir instead")

    def check(self) -> None:
        """Raise when the store cannot be reached or written (health checks)."""


class LocalStore(ArtifactStore):
    is_local = True

    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key.rstrip("/"))

    def _atomic_write(self, key: str, write) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def put_file(self, key: str, src: Path) -> None:
        def copy(f):
            with open(src, "rb") as s:
                shutil.copyfileobj(s, f, 1 << 20)

        self._atomic_write(key, copy)

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        def write(f):
            for c in chunks:
                f.write(c)

        self._atomic_write(key, write)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def fetch_dir(self, prefix: str, dest: Path) -> Path:
        # Already local: hand out the folder itself rather than copying a dataset or a checkpoint.
        return self._path(prefix)

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"the artifact folder {self.root} is not writable")

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"
