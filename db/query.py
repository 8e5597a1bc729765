"""The two reads every owned resource shares: one row of an owner, and a page of an owner's rows."""
from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

Row = TypeVar("Row")


def owned_row(session: Session, model: type[Row], row_id: str, owner_id: str | None) -> Row | None:
    """The row; with ``owner_id``, None unless that owner has it (the API answers 404 either way)."""
    row = session.get(model, row_id)
    return row if row is not None and (owner_id is None or row.owner_id == owner_id) else None


def owned_page(session: Session, model: type[Row], *, owner_id: str, limit: int, offset: int,
               where: list[Any] = ()) -> tuple[list[Row], int]:
    """A page of the owner's rows (those matching ``where`` too), newest first, and their total count."""
    cond = [model.owner_id == owner_id, *where]
    total = session.scalar(select(func.count()).select_from(model).where(*cond))
    rows = session.scalars(select(model).where(*cond)
                           .order_by(model.created_at.desc(), model.id).limit(limit).offset(offset))
    return list(rows), total or 0
