"""LoRA rows: trained ones (created by db.training.finish_training) and imported ones."""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ACTIVE, Generation, Lora, new_id
from db.query import owned_page, owned_row


def new_lora_id() -> str:
    return new_id()


def create_imported_lora(
    session: Session,
    *,
    lora_id: str,
    owner_id: str,
    name: str,
    format: str,
    original_key: str,
    peft_prefix: str | None = None,
    comfyui_key: str | None = None,
    rank: int | None = None,
    alpha: float | None = None,
    trigger: str | None = None,
    size_bytes: int = 0,
    meta: dict[str, Any] | None = None,
) -> Lora:
    lora = Lora(
        id=lora_id,
        owner_id=owner_id,
        name=name,
        source="imported",
        format=format,
        original_key=original_key,
        peft_prefix=peft_prefix,
        comfyui_key=comfyui_key,
        rank=rank,
        alpha=alpha,
        trigger=trigger,
        size_bytes=size_bytes,
        meta=meta or {},
    )
    session.add(lora)
    session.commit()
    return lora


def get_lora(session: Session, *, lora_id: str, owner_id: str | None = None) -> Lora | None:
    return owned_row(session, Lora, lora_id, owner_id)


def list_loras(session: Session, *, owner_id: str, limit: int = 20, offset: int = 0) -> tuple[list[Lora], int]:
    return owned_page(session, Lora, owner_id=owner_id, limit=limit, offset=offset)


def delete_lora(session: Session, *, lora_id: str, owner_id: str) -> Literal["deleted", "in_use"] | None:
    """Delete the row; refuse while a queued or running generation of the owner uses it."""
    lora = get_lora(session, lora_id=lora_id, owner_id=owner_id)
    if lora is None:
        return None
    active = session.scalars(
        select(Generation.params).where(Generation.owner_id == owner_id, Generation.status.in_(ACTIVE))
    )
    if any(lora_id == ref.get("id") for params in active for ref in params.get("loras", [])):
        return "in_use"
    session.delete(lora)
    session.commit()
    return "deleted"
