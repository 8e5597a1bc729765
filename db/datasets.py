"""Datasets: rows describing uploaded image/caption sets whose files live in the artifact store."""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import ACTIVE, Dataset, TrainingJob, new_id
from db.query import owned_page, owned_row


def new_dataset_id() -> str:
    """An id to store files under before the row exists (the row is written only after the files)."""
    return new_id()


def create_dataset(
    session: Session,
    *,
    dataset_id: str,
    owner_id: str,
    name: str,
    storage_prefix: str,
    num_images: int,
    num_captions: int,
    total_bytes: int,
    report: dict[str, Any],
) -> Dataset:
    ds = Dataset(
        id=dataset_id,
        owner_id=owner_id,
        name=name,
        storage_prefix=storage_prefix,
        num_images=num_images,
        num_captions=num_captions,
        total_bytes=total_bytes,
        report=report,
    )
    session.add(ds)
    session.commit()
    return ds


def get_dataset(session: Session, *, dataset_id: str, owner_id: str | None = None) -> Dataset | None:
    return owned_row(session, Dataset, dataset_id, owner_id)


def list_datasets(
    session: Session, *, owner_id: str, limit: int = 20, offset: int = 0
) -> tuple[list[Dataset], int]:
    return owned_page(session, Dataset, owner_id=owner_id, limit=limit, offset=offset)


def delete_dataset(session: Session, *, dataset_id: str, owner_id: str) -> Literal["deleted", "in_use"] | None:
    """Delete the row (finished jobs keep running history with dataset_id NULL); refuse while a job needs it."""
    ds = get_dataset(session, dataset_id=dataset_id, owner_id=owner_id)
    if ds is None:
        return None
    busy = session.scalar(
        select(func.count())
        .select_from(TrainingJob)
        .where(TrainingJob.dataset_id == dataset_id, TrainingJob.status.in_(ACTIVE))
    )
    # a job validating on it needs it as much (read in Python: the owner's active jobs are few, by quota)
    validating = any(
        params.get("validation_dataset_id") == dataset_id
        for params in session.scalars(
            select(TrainingJob.params).where(TrainingJob.owner_id == owner_id, TrainingJob.status.in_(ACTIVE))
        )
    )
    if busy or validating:
        return "in_use"
    session.delete(ds)
    session.commit()
    return "deleted"
