"""Write a file or a folder so that readers see all of it or nothing: build it under a hidden temporary name
beside the target (same filesystem, so the rename is atomic), then rename it into place.

    with atomic_file(path, mode=0o644) as tmp:      # tmp: a Path beside path; write it whole
        save_file(tensors, tmp)
    with atomic_dir(folder, replace=True) as tmp:   # tmp: an empty folder beside folder
        (tmp / "weights.safetensors").write_bytes(...)

A killed process leaves at most a hidden `.<name>.*.tmp` sibling, never a half-written target; an exception
removes the temporary and re-raises. Imports no torch (the API and the worker may use it too).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_file(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yields a temporary file path beside `path`; on success it gets `mode` (mkstemp makes it 0600, private)
    and replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path, mode: int | None = None, replace: bool = False) -> Iterator[Path]:
    """Yields an empty temporary folder beside `path`; on success it gets `mode` and is renamed to `path`.
    An existing folder at `path` is an error unless `replace` (then it is removed just before the rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        if replace and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
