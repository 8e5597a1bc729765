"""Where dataset files come from: a folder or a .zip, read in place (a zip is never extracted).

    src = open_source("photos.zip")          # or a folder
    for entry in src.entries: ...            # safe, regular files only, posix names relative to the root
    data = src.read(entry.name)              # bytes, never more than the entry's declared size; OSError if corrupt
    src.unsafe                               # [Issue(name, reason)] entries refused (absolute, '..', links, ...)

A zip is checked from its central directory before anything is read: entry count, total and per-entry
uncompressed size, absolute names, '..' components, symlinks, encrypted entries, duplicates. Refused entries
are listed in `unsafe` (the validator turns any of them into an error naming them), never read.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .entry_checks import is_os_litter, unsafe_zip_entry_reason, zip_over_limits_reason


@dataclass(frozen=True)
class Issue:
    """One file and what is wrong with it (JSON-friendly)."""
    name: str
    reason: str


@dataclass(frozen=True)
class Entry:
    name: str   # posix path relative to the source root
    size: int   # bytes (uncompressed)


@dataclass(frozen=True)
class SourceLimits:
    """Bounds on what a source may hold; a zip over them is refused before anything is decompressed."""
    max_entries: int = 20_000               # files in one dataset
    max_total_bytes: int = 4 * 1024 ** 3    # uncompressed total: a zip bomb cannot expand past this
    max_entry_bytes: int = 256 * 1024 ** 2  # one image file; bigger is not a training image


class SourceError(ValueError):
    """The source itself cannot be used (missing, not a folder or zip, corrupt archive, over the limits)."""


class FolderSource:
    """A dataset folder. Symlinks are followed only when they stay inside the folder."""

    def __init__(self, root: str | Path, limits: SourceLimits = SourceLimits()):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"dataset folder not found: {self.root}")
        self.name = str(self.root)
        self.unsafe: list[Issue] = []
        self.ignored: list[str] = []
        real_root = self.root.resolve()
        entries = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames.sort()
            for d in list(dirnames):
                if (Path(dirpath) / d).is_symlink():
                    rel = (Path(dirpath) / d).relative_to(self.root).as_posix()
                    self.unsafe.append(Issue(rel, "symlinked folder"))
                    dirnames.remove(d)
            for f in sorted(filenames):
                path = Path(dirpath) / f
                rel = path.relative_to(self.root).as_posix()
                if is_os_litter(rel):
                    self.ignored.append(rel)
                    continue
                if path.is_symlink():
                    target = path.resolve()
                    if not target.is_relative_to(real_root):
                        self.unsafe.append(Issue(rel, "symlink pointing outside the dataset folder"))
                        continue
                if not path.is_file():
                    self.unsafe.append(Issue(rel, "not a regular file"))
                    continue
                entries.append(Entry(rel, path.stat().st_size))
        if len(entries) > limits.max_entries:
            raise SourceError(f"{self.name}: {len(entries)} files, more than the limit of {limits.max_entries}")
        self.entries = [e for e in entries if e.size <= limits.max_entry_bytes]
        self.unsafe += [Issue(e.name, f"file of {e.size} bytes is over the limit of {limits.max_entry_bytes}")
                        for e in entries if e.size > limits.max_entry_bytes]

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


class ZipSource:
    """A .zip read in place. The ZipFile handle is opened lazily per process (DataLoader workers fork)."""

    def __init__(self, path: str | Path, limits: SourceLimits = SourceLimits()):
        self.path = Path(path)
        self.name = str(self.path)
        self.limits = limits
        self.unsafe: list[Issue] = []
        self.ignored: list[str] = []
        self._zf: zipfile.ZipFile | None = None
        self._pid = -1
        try:
            infos = self._zip().infolist()
        except (zipfile.BadZipFile, OSError) as e:
            raise SourceError(f"{self.name}: not a readable zip archive ({e})") from e
        too_big = zip_over_limits_reason(infos, limits.max_entries, limits.max_total_bytes)
        if too_big:
            raise SourceError(f"{self.name}: {too_big}")
        self._infos: dict[str, zipfile.ZipInfo] = {}
        seen: set[str] = set()
        for info in infos:
            name = info.filename
            reason = unsafe_zip_entry_reason(info)
            if reason is None and name in seen:
                reason = "duplicate entry name"
            seen.add(name)
            if reason:
                self.unsafe.append(Issue(name, reason))
                continue
            if info.is_dir():
                continue
            if is_os_litter(name):
                self.ignored.append(name)
                continue
            if info.file_size > limits.max_entry_bytes:
                self.unsafe.append(Issue(name, f"entry of {info.file_size} bytes is over the limit of "
                                               f"{limits.max_entry_bytes}"))
                continue
            self._infos[name] = info
        self.entries = [Entry(n, i.file_size) for n, i in sorted(self._infos.items())]

    def _zip(self) -> zipfile.ZipFile:
        if self._zf is None or self._pid != os.getpid():
            self._zf = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._zf

    def read(self, name: str) -> bytes:
        info = self._infos[name]
        try:
            # ZipExtFile stops at the declared size, so a lying header cannot make this read more.
            with self._zip().open(info) as f:
                return f.read(info.file_size + 1)[: info.file_size]
        except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
            # CRC mismatch, truncated archive, unknown compression: one bad entry, reported by name.
            raise OSError(f"corrupt zip entry ({type(e).__name__}: {e})") from e

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_zf"], state["_pid"] = None, -1
        return state


class LayeredSource:
    """A dataset with files laid over it from another source (the trainer's prior images under reg/, say): the
    entries of both, each read from its own. A name present in both is refused: nothing is silently shadowed."""

    def __init__(self, base: "FolderSource | ZipSource", overlay: "FolderSource | ZipSource"):
        clash = sorted({e.name for e in base.entries} & {e.name for e in overlay.entries})
        if clash:
            raise SourceError(f"{overlay.name} would replace {len(clash)} file(s) of {base.name}, e.g. {clash[0]}")
        self.base, self.overlay = base, overlay
        self.name = f"{base.name} + {overlay.name}"
        self.entries = list(base.entries) + list(overlay.entries)
        self.unsafe = list(base.unsafe) + list(overlay.unsafe)
        self.ignored = list(base.ignored) + list(overlay.ignored)
        self._from_overlay = {e.name for e in overlay.entries}

    def read(self, name: str) -> bytes:
        return (self.overlay if name in self._from_overlay else self.base).read(name)


Source = FolderSource | ZipSource | LayeredSource


def open_source(source: str | Path | Source, limits: SourceLimits = SourceLimits()) -> Source:
    """A folder or a .zip path (or an already opened source) -> Source."""
    if isinstance(source, (FolderSource, ZipSource, LayeredSource)):
        return source
    path = Path(source)
    if path.is_dir():
        return FolderSource(path, limits)
    if not path.exists():
        raise SourceError(f"dataset not found: {path}")
    if zipfile.is_zipfile(path):
        return ZipSource(path, limits)
    raise SourceError(f"{path}: a dataset must be a folder or a .zip archive")
