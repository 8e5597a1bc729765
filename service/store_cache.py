"""A worker's local copies of what it reads from a remote store, keyed by content: a LoRA file, a dataset or a
checkpoint is fetched once per machine, however many jobs and processes (DDP ranks, several workers) read it.

    cache = StoreCache(store, data_dir / "cache", max_bytes=50 << 30, keep_s=48 * 3600)
    cache.file("loras/x/lora.safetensors")     # -> <root>/files/<content id>/lora.safetensors
    cache.folder("datasets/abc")               # -> <root>/dirs/<content id>/

The content id comes from the store (an object's sha256 metadata; a folder's manifest), so a key rewritten
with other bytes is fetched again and the same bytes under two keys share one copy. A copy is downloaded into
<root>/tmp and renamed into place whole: a crashed download leaves no entry, and two processes fetching the
same thing at once both end up reading one complete entry. With a local store nothing is copied: its own
files are handed out.

Each use touches the entry; past ``max_bytes`` the least recently used entries are removed, but never one used
within ``keep_s`` (a training reads its dataset for as long as it runs: keep_s is the training time limit).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path, PurePosixPath

from service.store import ArtifactStore

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class StoreCache:
    def __init__(self, store: ArtifactStore, root: Path, *, max_bytes: int = 0, keep_s: float = 0.0):
        self.store, self.root, self.max_bytes, self.keep_s = store, Path(root), max_bytes, keep_s

    def file(self, key: str) -> Path:
        """A local path holding the stored file ``key``."""
        if self.store.is_local:
            path = self.store.local_path(key)
            if path is None:
                raise FileNotFoundError(f"no stored file {key!r}")
            return path
        entry = self.root / "files" / _entry_name(self.store.content_id(key))
        target = entry / PurePosixPath(key).name
        _touch(entry)  # before the check: a recent entry is never trimmed by another process
        if not target.is_file():
            tmp = self._tmp() / target.name
            try:
                with self.store.open(key) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                entry.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp.parent, ignore_errors=True)
            log.info("store cache: fetched %s (%d bytes)", key, target.stat().st_size)
            self._trim(keep=entry)
        return target

    def folder(self, prefix: str) -> Path:
        """A local folder holding every stored file under ``prefix``."""
        if self.store.is_local:
            return self.store.fetch_dir(prefix, self.root / "unused")
        entry = self.root / "dirs" / _entry_name(self.store.dir_content_id(prefix))
        _touch(entry)
        if not entry.is_dir():
            tmp = self._tmp() / "folder"
            try:
                self.store.fetch_dir(prefix, tmp)
                entry.parent.mkdir(parents=True, exist_ok=True)
                try:
                    tmp.rename(entry)
                except OSError:
                    if not entry.is_dir():  # not a lost race with another process fetching the same folder
                        raise
            finally:
                shutil.rmtree(tmp.parent, ignore_errors=True)
            log.info("store cache: fetched %s/ (%d bytes)", prefix, _size(entry))
            self._trim(keep=entry)
        return entry

    def _tmp(self) -> Path:
        path = self.root / "tmp" / uuid.uuid4().hex  # the same filesystem as the entries: renames are atomic
        path.mkdir(parents=True)
        return path

    def entries(self) -> list[Path]:
        return [
            e for kind in ("files", "dirs") if (self.root / kind).is_dir() for e in (self.root / kind).iterdir()
        ]

    def _trim(self, keep: Path) -> None:
        """Remove least recently used entries while the cache is over max_bytes (none used within keep_s)."""
        if not self.max_bytes:
            return
        sized = [(e.stat().st_mtime, _size(e), e) for e in self.entries()]
        total = sum(size for _, size, _ in sized)
        cutoff = time.time() - self.keep_s
        for used, size, entry in sorted(sized, key=lambda t: t[0]):
            if total <= self.max_bytes or used > cutoff:
                break
            if entry == keep or _used_since(entry, cutoff):
                continue
            # Renamed away first: a reader finds either the whole entry or none, then fetches it again.
            trash = self._tmp() / "old"
            try:
                entry.rename(trash)
            except OSError:
                continue  # removed by another process meanwhile
            shutil.rmtree(trash.parent, ignore_errors=True)
            total -= size
            log.info("store cache: removed %s (%d bytes, unused for %.0f s)", entry.name, size, time.time() - used)


def _entry_name(content_id: str) -> str:
    return _UNSAFE.sub("_", content_id)[:200]


def _touch(entry: Path) -> None:
    try:
        os.utime(entry)
    except OSError:
        pass  # not there (yet): fetched next


def _used_since(entry: Path, cutoff: float) -> bool:
    try:
        return entry.stat().st_mtime > cutoff  # touched by another process since the sizes were read
    except OSError:
        return True  # gone already


def _size(entry: Path) -> int:
    return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
