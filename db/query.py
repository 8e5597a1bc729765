"""The reads every owned resource shares: one row of an owner, a page of an owner's rows, and how many of an
owner's jobs are active."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.orm.interfaces import ONETOMANY

from db.models import ACTIVE, Owner

Row = TypeVar("Row")


def owned_row(session: Session, model: type[Row], row_id: str, owner_id: str | None) -> Row | None:
    """The row; with ``owner_id``, None unless that owner has it (the API answers 404 either way)."""
    row = session.get(model, row_id)
    return row if row is not None and (owner_id is None or row.owner_id == owner_id) else None


def _children(model: type) -> list:
    """Load options for the rows a public view of ``model`` shows with it (a job's previews and LoRA, a
    generation's images): one query per relationship for the whole page, instead of two per listed row."""
    return [
        selectinload(rel.class_attribute) for rel in inspect(model).relationships if rel.direction is ONETOMANY
    ]


def owned_page(
    session: Session, model: type[Row], *, owner_id: str, limit: int, offset: int, where: list[Any] = ()
) -> tuple[list[Row], int]:
    """A page of the owner's rows (those matching ``where`` too), newest first, and their total count; the
    rows' children come loaded, so the number of queries does not grow with the page size."""
    cond = [model.owner_id == owner_id, *where]
    total = session.scalar(select(func.count()).select_from(model).where(*cond))
    rows = session.scalars(
        select(model)
        .where(*cond)
        .options(*_children(model))
        .order_by(model.created_at.desc(), model.id)
        .limit(limit)
        .offset(offset)
    )
    return list(rows), total or 0


def count_active(session: Session, model: type[Row], *, owner_id: str, lock_owner: bool = False) -> int:
    """The owner's queued + running jobs of ``model``. ``lock_owner`` first locks the owner's row (PostgreSQL;
    until the session's commit or rollback), so that two submits at once cannot both pass a limit."""
    if lock_owner:
        session.execute(select(Owner.id).where(Owner.id == owner_id).with_for_update())
    return (
        session.scalar(
            select(func.count()).select_from(model).where(model.owner_id == owner_id, model.status.in_(ACTIVE))
        )
        or 0
    )
