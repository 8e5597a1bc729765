"""/v1/datasets: upload (images + captions, or one zip), list, read, delete."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from api.deps import CurrentOwner, DatasetId, PageDep, SessionDep, SettingsDep, StoreDep, not_found
from api.errors import ApiError, error_responses
from api.schemas import NO_NUL, DatasetPublic, DatasetsPublic
from api.uploads import Incoming, UploadError, prepare_dataset, remove
from db.datasets import create_dataset, delete_dataset, get_dataset, list_datasets, new_dataset_id
from db.models import Dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=error_responses(401, 422, 503))


def to_public(ds: Dataset) -> DatasetPublic:
    return DatasetPublic(
        id=ds.id,
        name=ds.name,
        num_images=ds.num_images,
        num_captions=ds.num_captions,
        total_bytes=ds.total_bytes,
        report=ds.report,
        created_at=ds.created_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetPublic, responses=error_responses(413))
async def upload_dataset(
    owner: CurrentOwner,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    files: Annotated[
        list[UploadFile],
        File(
            min_length=1,
            description="images (PNG/JPEG/WebP) with optional same-name .txt "
            "captions or metadata.jsonl, or one .zip of those",
        ),
    ],
    name: Annotated[str | None, Form(max_length=200, pattern=NO_NUL, description="display name")] = None,
    resolution: Annotated[
        int,
        Form(
            ge=32,
            le=4096,
            multiple_of=32,
            description="training resolution the validation report buckets for (multiple of 32)",
        ),
    ] = 1024,
):
    """Upload a dataset; every file is checked and the trainer's validation runs before anything is stored.

    422 names the first file that is refused (type, name, size, content) and, when the trainer's validation ran,
    carries its report: every file that would not train, with the reason."""
    staging = Path(tempfile.mkdtemp(prefix="upload-", dir=_tmp_dir(settings)))
    incoming = [Incoming(f.filename or "", f.file, f.size) for f in files]
    try:
        staged, report = await run_in_threadpool(prepare_dataset, incoming, staging, settings, resolution)
        ds_id = new_dataset_id()
        prefix = f"datasets/{ds_id}"
        try:
            await run_in_threadpool(store.put_dir, prefix, staging)
            ds = create_dataset(
                session,
                dataset_id=ds_id,
                owner_id=owner.id,
                name=name or _default_name(files),
                storage_prefix=prefix,
                num_images=report["usable"],
                num_captions=report["captioned"],
                total_bytes=staged.total_bytes,
                report=report,
            )
        except BaseException:
            store.delete_prefix(prefix)  # no row, no files
            raise
    except UploadError as e:
        raise ApiError(e.status, str(e), field="files", report=e.report) from None
    finally:
        remove(staging)
    return to_public(ds)


def _tmp_dir(settings) -> Path:
    path = Path(settings.data_dir) / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _default_name(files: list[UploadFile]) -> str:
    first = (files[0].filename or "dataset")[:150]  # the column holds 200
    return first if len(files) == 1 else f"{first} and {len(files) - 1} more"


@router.get("", response_model=DatasetsPublic)
def read_datasets(owner: CurrentOwner, session: SessionDep, page: PageDep):
    """Your datasets, newest first."""
    rows, total = list_datasets(session, owner_id=owner.id, limit=page.limit, offset=page.offset)
    return DatasetsPublic(data=[to_public(r) for r in rows], count=total)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=error_responses(404))
def read_dataset(dataset_id: DatasetId, owner: CurrentOwner, session: SessionDep):
    """One dataset with its validation report."""
    ds = get_dataset(session, dataset_id=dataset_id, owner_id=owner.id)
    if ds is None:
        raise not_found("dataset", dataset_id)
    return to_public(ds)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404, 409))
def remove_dataset(dataset_id: DatasetId, owner: CurrentOwner, session: SessionDep, store: StoreDep):
    """Delete a dataset and its files; refused (409) while a queued or running job trains on it."""
    ds = get_dataset(session, dataset_id=dataset_id, owner_id=owner.id)
    prefix = ds.storage_prefix if ds else None
    outcome = delete_dataset(session, dataset_id=dataset_id, owner_id=owner.id)
    if outcome is None:
        raise not_found("dataset", dataset_id)
    if outcome == "in_use":
        raise ApiError(
            status.HTTP_409_CONFLICT,
            f"dataset {dataset_id} is used by a queued or running training job; cancel it first",
        )
    store.delete_prefix(prefix)
