"""A local folder of images and captions as one zip, the upload form the API prefers (one request, no
1000-file multipart limit). Paths stay relative, so subfolders and metadata.jsonl keep their meaning."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from client.errors import ClientError


def zip_folder(folder: Path) -> Path:
    """A temporary zip of every file under ``folder`` except hidden ones (.DS_Store, .git...), which the
    service would skip anyway; the caller deletes it. Stored, not deflated: images do not compress."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise ClientError(f"{folder} holds no files to upload")
    handle = tempfile.NamedTemporaryFile(prefix="o1lora-dataset-", suffix=".zip", delete=False)
    handle.close()
    path = Path(handle.name)
    try:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            for f in files:
                zf.write(f, f.relative_to(folder).as_posix())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
