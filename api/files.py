"""Serving artifacts: straight from a local file when the store has one, else streamed from the store a piece
at a time (an S3 object goes out as it comes in: the API never holds a whole file in memory)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import status
from fastapi.responses import FileResponse, StreamingResponse

from api.errors import ApiError
from service.store import ArtifactStore

PIECE = 1 << 20


def send_artifact(store: ArtifactStore, key: str, media_type: str, filename: str | None = None):
    path = store.local_path(key)
    disposition = {"filename": filename} if filename else {}
    if path is not None:
        return FileResponse(path, media_type=media_type, **disposition)
    try:
        f = store.open(key)  # opened here: a missing object answers 404, not a response cut off after its headers
    except FileNotFoundError:
        raise ApiError(status.HTTP_404_NOT_FOUND, "the stored file is missing (deleted meanwhile?)") from None
    size = f.seek(0, 2)
    f.seek(0)

    def pieces():
        try:
            while block := f.read(PIECE):
                yield block
        finally:
            f.close()  # also when the client goes away mid-download

    headers = {"Content-Length": str(size)}
    if filename:
        headers["Content-Disposition"] = _attachment(filename)
    return StreamingResponse(pieces(), media_type=media_type, headers=headers)


def _attachment(filename: str) -> str:
    quoted = quote(filename)
    if quoted != filename:  # RFC 6266: a non-ASCII name goes as UTF-8, percent-encoded (what FileResponse does)
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'
