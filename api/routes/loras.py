"""/v1/loras: list, read, download (PEFT zip / ComfyUI, musubi-tuner or DiffSynth file / original), import, delete."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.deps import CurrentOwner, LoraId, PageDep, SessionDep, SettingsDep, StoreDep, not_found
from api.errors import ApiError, error_responses
from api.files import send_artifact
from api.lora_import import store_lora_file
from api.schemas import NO_NUL, LoraPublic, LorasPublic
from core.lora.check import LoraFileError, base_index
from core.lora.convert import SINGLE_FILE_FORMATS, NotConvertible, convert_download
from db.loras import create_imported_lora, delete_lora, get_lora, list_loras, new_lora_id
from db.models import Lora
from service.store import ArtifactStore

router = APIRouter(prefix="/v1/loras", tags=["loras"], responses=error_responses(401, 422, 503))


def downloads(lora: Lora) -> dict[str, str]:
    base = f"/v1/loras/{lora.id}/file?format="
    available = {
        "peft": lora.peft_prefix,
        "comfyui": lora.comfyui_key,
        "musubi": lora.comfyui_key,
        "diffsynth": lora.comfyui_key,
        "original": lora.original_key,
    }
    return {fmt: base + fmt for fmt, where in available.items() if where}


def _choice(lora: Lora, which: str | None) -> tuple[str | None, str | None]:
    """(peft_prefix, comfyui_key) of the training checkpoint asked for: the row's own files when `which` is
    None or the one published, else the other one the trainer kept (metadata "checkpoints"); 409 otherwise."""
    choices = (lora.meta or {}).get("checkpoints")
    if (
        which is None
        or (choices and choices.get("published") == which)
        or (not choices and which == "last" and lora.source == "trained")
    ):  # no validation: the last step
        return lora.peft_prefix, lora.comfyui_key
    entry = (choices or {}).get(which) or {}
    if entry.get("comfyui_key"):
        return entry.get("peft_prefix"), entry["comfyui_key"]
    if choices and entry.get("step") is not None and entry.get("step") == choices[choices["published"]]["step"]:
        return lora.peft_prefix, lora.comfyui_key  # the best step was the last: one LoRA is both
    raise ApiError(
        status.HTTP_409_CONFLICT,
        f"LoRA {lora.id} has no '{which}' checkpoint: only trainings with "
        f"validation keep the best and the last step",
    )


def _stored_keys(lora: Lora) -> list[str]:
    keys = [k for k in (lora.peft_prefix, lora.comfyui_key, lora.original_key) if k]
    for entry in ((lora.meta or {}).get("checkpoints") or {}).values():
        if isinstance(entry, dict):
            keys += [entry[k] for k in ("peft_prefix", "comfyui_key") if entry.get(k)]
    return keys


def to_public(lora: Lora) -> LoraPublic:
    return LoraPublic(
        id=lora.id,
        name=lora.name,
        source=lora.source,
        format=lora.format,
        rank=lora.rank,
        alpha=lora.alpha,
        trigger=lora.trigger,
        training_job_id=lora.training_job_id,
        size_bytes=lora.size_bytes,
        metadata=lora.meta,
        downloads=downloads(lora),
        created_at=lora.created_at,
    )


@router.get("", response_model=LorasPublic)
def read_loras(owner: CurrentOwner, session: SessionDep, page: PageDep):
    """Your LoRAs (trained and imported), newest first."""
    rows, total = list_loras(session, owner_id=owner.id, limit=page.limit, offset=page.offset)
    return LorasPublic(data=[to_public(r) for r in rows], count=total)


@router.get("/{lora_id}", response_model=LoraPublic, responses=error_responses(404))
def read_lora(lora_id: LoraId, owner: CurrentOwner, session: SessionDep):
    """One LoRA with its download links."""
    lora = get_lora(session, lora_id=lora_id, owner_id=owner.id)
    if lora is None:
        raise not_found("LoRA", lora_id)
    return to_public(lora)


@router.delete("/{lora_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404, 409))
def remove_lora(lora_id: LoraId, owner: CurrentOwner, session: SessionDep, store: StoreDep):
    """Delete a LoRA and its files; refused (409) while a queued or running generation uses it."""
    lora = get_lora(session, lora_id=lora_id, owner_id=owner.id)
    keys = _stored_keys(lora) if lora else []
    outcome = delete_lora(session, lora_id=lora_id, owner_id=owner.id)
    if outcome is None:
        raise not_found("LoRA", lora_id)
    if outcome == "in_use":
        raise ApiError(status.HTTP_409_CONFLICT, f"LoRA {lora_id} is used by a queued or running generation")
    for key in keys:
        store.delete_prefix(key)


@router.get(
    "/{lora_id}/file",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/zip": {}, "application/octet-stream": {}},
            "description": "a zip of the PEFT folder, or one safetensors file",
        },
        **error_responses(404, 409),
    },
)
def download_lora(
    lora_id: LoraId,
    owner: CurrentOwner,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    format: Annotated[
        Literal["peft", "comfyui", "musubi", "diffsynth", "original"] | None,
        Query(
            description="peft: zip of the PEFT folder; comfyui / musubi / diffsynth: "
            "one safetensors with the key names and alpha convention "
            "of ComfyUI, musubi-tuner or DiffSynth-Studio; original: "
            "the imported file as uploaded; default: the first "
            "available of comfyui, peft, original"
        ),
    ] = None,
    dtype: Annotated[
        Literal["bf16", "fp32"], Query(description="weights of a comfyui / musubi / diffsynth file")
    ] = "bf16",
    which: Annotated[
        Literal["last", "best"] | None,
        Query(
            description="a training with validation keeps two checkpoints: the last "
            "step and the lowest validation loss; default: the one "
            "published (metadata.checkpoints.published)"
        ),
    ] = None,
):
    """Download the LoRA in the format your other tools load."""
    lora = get_lora(session, lora_id=lora_id, owner_id=owner.id)
    if lora is None:
        raise not_found("LoRA", lora_id)
    peft_prefix, comfyui_key = _choice(lora, which)
    available = downloads(lora)
    fmt = format or next((f for f in ("comfyui", "peft", "original") if f in available), None)
    if fmt not in available:
        raise ApiError(
            status.HTTP_409_CONFLICT,
            f"LoRA {lora_id} has no {format} copy (it was "
            f"{lora.source} as {lora.format}); available: "
            f"{', '.join(available) or 'none'}",
        )
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in lora.name)[:80] or "lora"
    if which is not None:
        safe = f"{safe}-{which}"
    if fmt == "peft":
        path = _zip_prefix(store, peft_prefix)
        return FileResponse(
            path,
            media_type="application/zip",
            filename=f"{safe}-peft.zip",
            background=BackgroundTask(os.unlink, path),
        )
    if fmt in SINGLE_FILE_FORMATS:
        try:
            path = convert_download(store, comfyui_key, fmt, dtype, base_index(settings.model_path))
        except (LoraFileError, NotConvertible) as e:  # e.g. a LoRA stored for another base model than today's
            raise ApiError(status.HTTP_409_CONFLICT, f"LoRA {lora_id} cannot be written as {fmt}: {e}") from None
        return FileResponse(
            path,
            media_type="application/octet-stream",
            filename=f"{safe}-{fmt}.safetensors",
            background=BackgroundTask(os.unlink, path),
        )
    key = lora.original_key
    return send_artifact(store, key, "application/octet-stream", filename=f"{safe}{PurePosixPath(key).suffix}")


def _zip_prefix(store: ArtifactStore, prefix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=".zip")
    os.close(fd)
    # Stored, not deflated: safetensors do not compress, and this keeps the download fast.
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key in store.list(prefix):
            with store.open(key) as src, zf.open(key[len(prefix) + 1 :], "w", force_zip64=True) as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
    return path


@router.post("", status_code=status.HTTP_201_CREATED, response_model=LoraPublic, responses=error_responses(413))
async def import_lora(
    owner: CurrentOwner,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    file: Annotated[
        UploadFile,
        File(
            description="a .safetensors LoRA (PEFT, ComfyUI, musubi-tuner, DiffSynth or "
            "bare keys), or a .zip of a PEFT folder (adapter_config.json + "
            "adapter_model.safetensors)"
        ),
    ],
    name: Annotated[
        str | None, Form(max_length=200, pattern=NO_NUL, description="display name; default: the file name")
    ] = None,
    trigger: Annotated[
        str | None, Form(max_length=200, pattern=NO_NUL, description="trigger phrase, if it has one")
    ] = None,
    allow_partial: Annotated[
        bool,
        Form(
            description="keep a file some of whose entries do not fit the base "
            "model (they are listed in its metadata); default: refuse it"
        ),
    ] = False,
):
    """Import a LoRA file; its keys are checked against the layouts the loader reads before it is stored.

    422 names what is wrong with a file that is refused (empty, not safetensors, not a LoRA, another model's
    modules, a pickle); nothing is stored then."""
    filename = PurePosixPath((file.filename or "").replace("\\", "/")).name
    if file.size is not None and file.size > settings.max_lora_bytes:
        raise ApiError(
            413, f"{filename}: over the LoRA size limit of {settings.max_lora_bytes} bytes", field="file"
        )
    lora_id = new_lora_id()
    try:
        stored = await run_in_threadpool(
            store_lora_file,
            store,
            lora_id,
            filename,
            file.file,
            settings.max_lora_bytes,
            base_index(settings.model_path),
            allow_partial,
        )
    except LoraFileError as e:
        raise ApiError(422, f"{filename}: {e}", field="file") from None
    try:
        lora = create_imported_lora(
            session,
            lora_id=lora_id,
            owner_id=owner.id,
            trigger=trigger,
            name=name or Path(filename).stem[:200] or "lora",
            **stored,
        )
    except BaseException:
        store.delete_prefix(f"loras/{lora_id}")
        raise
    return to_public(lora)
