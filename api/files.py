"""Serving artifacts: straight from a local file when the store has one, else streamed from the store."""

from __future__ import annotations

from fastapi.responses import FileResponse, StreamingResponse

from service.store import ArtifactStore


def send_artifact(store: ArtifactStore, key: str, media_type: str, filename: str | None = None):
    path = store.local_path(key)
    disposition = {"filename": filename} if filename else {}
    if path is not None:
        return FileResponse(path, media_type=media_type, **disposition)

    def chunks():
        with store.open(key) as f:
            while block := f.read(1 << 20):
                yield block

    headers = {"Content-Disposition": f'attachment; filename="{filename}"'} if filename else None
    return StreamingResponse(chunks(), media_type=media_type, headers=headers)
