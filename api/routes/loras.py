"""/v1/loras: list, read, download (PEFT zip / ComfyUI file / original), import, delete."""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.deps import CurrentOwner, SessionDep, SettingsDep, StoreDep, not_found
from api.files import send_artifact
from api.lora_check import LoraFileError, inspect_lora, read_header
from api.lora_convert import NotConvertible, canonical_modules, write_comfyui, write_peft
from api.schemas import LoraPublic, LorasPublic
from db.loras import create_imported_lora, delete_lora, get_lora, list_loras, new_lora_id
from db.models import Lora
from db.store import ArtifactStore

router = APIRouter(prefix="/v1/loras", tags=["loras"])
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def downloads(lora: Lora) -> dict[str, str]:
    base = f"/v1/loras/{lora.id}/file?format="
    available = {"peft": lora.peft_prefix, "comfyui": lora.comfyui_key, "original": lora.original_key}
    return {fmt: base + fmt for fmt, where in available.items() if where}


def to_public(lora: Lora) -> LoraPublic:
    return LoraPublic(id=lora.id, name=lora.name, source=lora.source, format=lora.format, rank=lora.rank,
                      alpha=lora.alpha, trigger=lora.trigger, training_job_id=lora.training_job_id,
                      size_bytes=lora.size_bytes, metadata=lora.meta, downloads=downloads(lora),
                      created_at=lora.created_at)


@router.get("", response_model=LorasPublic)
def read_loras(owner: CurrentOwner, session: SessionDep,
               limit: Annotated[int, Query(ge=1, le=100, description="page size")] = 20,
               offset: Annotated[int, Query(ge=0, description="items to skip")] = 0):
    """Your LoRAs (trained and imported), newest first."""
    rows, total = list_loras(session, owner_id=owner.id, limit=limit, offset=offset)
    return LorasPublic(data=[to_public(r) for r in rows], count=total)


@router.get("/{lora_id}", response_model=LoraPublic)
def read_lora(lora_id: str, owner: CurrentOwner, session: SessionDep):
    """One LoRA with its download links."""
    lora = get_lora(session, lora_id=lora_id, owner_id=owner.id)
    if lora is None:
        raise not_found("LoRA", lora_id)
    return to_public(lora)


@router.delete("/{lora_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_lora(lora_id: str, owner: CurrentOwner, session: SessionDep, store: StoreDep):
    """Delete a LoRA and its files; refused (409) while a queued or running generation uses it."""
    lora = get_lora(session, lora_id=lora_id, owner_id=owner.id)
    keys = [k for k in (lora.peft_prefix, lora.comfyui_key, lora.original_key) if k] if lora else []
    outcome = delete_lora(session, lora_id=lora_id, owner_id=owner.id)
    if outcome is None:
        raise not_found("LoRA", lora_id)
    if outcome == "in_use":
        raise HTTPException(status.HTTP_409_CONFLICT, f"LoRA {lora_id} is used by a queued or running generation")
    for key in keys:
        store.delete_prefix(key)


@router.get("/{lora_id}/file", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}, "application/octet-stream": {}},
                             "description": "a zip of the PEFT folder, or one safetensors file"}})
def download_lora(lora_id: str, owner: CurrentOwner, session: SessionDep, store: StoreDep,
                  format: Annotated[Literal["peft", "comfyui", "original"] | None,
                                    Query(description="peft: zip of the PEFT folder; comfyui: one ComfyUI-style "
                                                      "safetensors; original: the imported file as uploaded; "
                                                      "default: the first available of comfyui, peft, original")
                                    ] = None):
    """Download the LoRA in the format your other tools load."""
    lora = get_lora(session, lora_id=lora_id, owner_id=owner.id)
    if lora is None:
        raise not_found("LoRA", lora_id)
    available = downloads(lora)
    fmt = format or next(iter(sorted(available, key=["comfyui", "peft", "original"].index)), None)
    if fmt not in available:
        raise HTTPException(status.HTTP_409_CONFLICT, f"LoRA {lora_id} has no {format} copy (it was "
                                                      f"{lora.source} as {lora.format}); available: "
                                                      f"{', '.join(available) or 'none'}")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in lora.name)[:80] or "lora"
    if fmt == "peft":
        path = _zip_prefix(store, lora.peft_prefix)
        return FileResponse(path, media_type="application/zip", filename=f"{safe}-peft.zip",
                            background=BackgroundTask(os.unlink, path))
    key = lora.comfyui_key if fmt == "comfyui" else lora.original_key
    return send_artifact(store, key, "application/octet-stream", filename=f"{safe}{PurePosixPath(key).suffix}")


def _zip_prefix(store: ArtifactStore, prefix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=".zip")
    os.close(fd)
    # Stored, not deflated: safetensors do not compress, and this keeps the download fast.
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key in store.list(prefix):
            with store.open(key) as src, zf.open(key[len(prefix) + 1:], "w", force_zip64=True) as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
    return path


@router.post("", status_code=status.HTTP_201_CREATED, response_model=LoraPublic)
async def import_lora(
    owner: CurrentOwner, session: SessionDep, store: StoreDep, settings: SettingsDep,
    file: Annotated[UploadFile, File(description="a .safetensors LoRA (PEFT, ComfyUI, musubi-tuner, DiffSynth or "
                                                 "bare keys), or a .zip of a PEFT folder (adapter_config.json + "
                                                 "adapter_model.safetensors)")],
    name: Annotated[str | None, Form(max_length=200, description="display name; default: the file name")] = None,
    trigger: Annotated[str | None, Form(max_length=200, description="trigger phrase, if it has one")] = None,
):
    """Import a LoRA file; its keys are checked against the layouts the loader reads before it is stored."""
    filename = PurePosixPath((file.filename or "").replace("\\", "/")).name
    if file.size is not None and file.size > settings.max_lora_bytes:
        raise HTTPException(413, f"{filename}: over the LoRA size limit of {settings.max_lora_bytes} bytes")
    lora_id = new_lora_id()
    try:
        stored = await run_in_threadpool(_check_and_store, store, lora_id, filename, file.file,
                                          settings.max_lora_bytes)
    except LoraFileError as e:
        raise HTTPException(422, f"{filename}: {e}") from None
    try:
        lora = create_imported_lora(session, lora_id=lora_id, owner_id=owner.id, name=name or Path(filename).stem or "lora",
                                    trigger=trigger, **stored)
    except BaseException:
        store.delete_prefix(f"loras/{lora_id}")
        raise
    return to_public(lora)


def _check_and_store(store: ArtifactStore, lora_id: str, filename: str, f, max_bytes: int) -> dict:
    """Check the upload, store it as uploaded, and store the download formats it converts to."""
    size = f.seek(0, 2)
    if size > max_bytes:
        raise LoraFileError(f"over the LoRA size limit of {max_bytes} bytes")
    lower = filename.lower()
    if lower.endswith(".safetensors"):
        weights, wsize, config, original = f, size, None, "original.safetensors"
    elif lower.endswith(".zip"):
        data, config = _peft_zip(f, max_bytes)
        weights, wsize, original = io.BytesIO(data), len(data), "original.zip"
    else:
        raise LoraFileError("upload a .safetensors file or a .zip of a PEFT folder (pickle .bin/.pt files can run "
                            "code and are not accepted)")
    weights.seek(0)
    info = inspect_lora(weights, wsize, peft_config=config)
    if config is not None and info.format != "peft":
        raise LoraFileError(f"adapter_model.safetensors has {info.format} keys, not PEFT ones")
    prefix = f"loras/{lora_id}"
    try:
        f.seek(0)
        store.put_stream(f"{prefix}/{original}", iter(lambda: f.read(1 << 20), b""))
        where, note = _store_formats(store, prefix, f"{prefix}/{original}", weights, wsize, info, config)
    except BaseException:
        store.delete_prefix(prefix)
        raise
    meta = {**info.metadata, **({"unknown_keys": info.unknown_keys} if info.unknown_keys else {}),
            **({"conversion": note} if note else {})}
    return dict(format=info.format, original_key=f"{prefix}/{original}", rank=info.rank, alpha=info.alpha,
                size_bytes=size, meta=meta, **where)


def _store_formats(store: ArtifactStore, prefix: str, original_key: str, weights, wsize: int, info,
                   config: dict | None) -> tuple[dict, str | None]:
    """Store keys of the ComfyUI file and the PEFT folder (converted when the upload is in another layout)."""
    where = {"comfyui_key": original_key} if info.format == "comfyui" else {}
    if config is not None:  # an uploaded PEFT folder: kept exactly as it came
        weights.seek(0)
        store.put_stream(f"{prefix}/peft/adapter_model.safetensors", iter(lambda: weights.read(1 << 20), b""))
        store.put_bytes(f"{prefix}/peft/adapter_config.json", json.dumps(config, indent=2).encode())
        where["peft_prefix"] = f"{prefix}/peft"
    weights.seek(0)
    header, _, data_start = read_header(weights, wsize)
    try:
        modules = canonical_modules(weights, header, data_start, info.format, config)
    except NotConvertible as e:
        return where, str(e)
    if config is None:
        with tempfile.TemporaryFile() as tmp:
            peft_config = write_peft(weights, data_start, modules, tmp, info.metadata)
            tmp.seek(0)
            store.put_stream(f"{prefix}/peft/adapter_model.safetensors", iter(lambda: tmp.read(1 << 20), b""))
        store.put_bytes(f"{prefix}/peft/adapter_config.json", json.dumps(peft_config, indent=2).encode())
    where["peft_prefix"] = f"{prefix}/peft"
    if "comfyui_key" not in where:
        with tempfile.TemporaryFile() as tmp:
            write_comfyui(weights, data_start, modules, tmp, info.metadata)
            tmp.seek(0)
            store.put_stream(f"{prefix}/lora.safetensors", iter(lambda: tmp.read(1 << 20), b""))
        where["comfyui_key"] = f"{prefix}/lora.safetensors"
    return where, None


def _peft_zip(f, max_bytes: int) -> tuple[bytes, dict]:
    """The weights and config of a PEFT folder in a zip (at its root or in one folder); nothing else is read."""
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
    except zipfile.BadZipFile as e:
        raise LoraFileError(f"not a readable zip ({e})") from None
    with zf:
        found = {PurePosixPath(i.filename).name: i for i in zf.infolist()
                 if PurePosixPath(i.filename).name in PEFT_FILES and len(PurePosixPath(i.filename).parts) <= 2
                 and ".." not in PurePosixPath(i.filename).parts and not i.is_dir()}
        missing = [n for n in PEFT_FILES if n not in found]
        if missing:
            raise LoraFileError(f"the zip is not a PEFT folder: {', '.join(missing)} missing")
        if found["adapter_model.safetensors"].file_size > max_bytes:
            raise LoraFileError(f"adapter_model.safetensors expands to over {max_bytes} bytes")
        if found["adapter_config.json"].file_size > 1 << 20:
            raise LoraFileError("adapter_config.json is over 1 MiB")
        try:
            config = json.loads(zf.read(found["adapter_config.json"]))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LoraFileError("adapter_config.json is not JSON") from None
        if not isinstance(config, dict):
            raise LoraFileError("adapter_config.json is not a JSON object")
        return zf.read(found["adapter_model.safetensors"]), config
