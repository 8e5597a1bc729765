"""Uploaded reference images: rows describing files in the artifact store that generations condition on."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.models import UploadedImage, new_id
from db.query import owned_page, owned_row


def new_image_id() -> str:
    """An id to store the file under before the row exists (the row is written only after the file)."""
    return new_id()


def create_image(
    session: Session,
    *,
    image_id: str,
    owner_id: str,
    name: str,
    storage_key: str,
    format: str,
    width: int,
    height: int,
    size_bytes: int,
) -> UploadedImage:
    img = UploadedImage(
        id=image_id,
        owner_id=owner_id,
        name=name,
        storage_key=storage_key,
        format=format,
        width=width,
        height=height,
        size_bytes=size_bytes,
    )
    session.add(img)
    session.commit()
    return img


def get_image(session: Session, *, image_id: str, owner_id: str | None = None) -> UploadedImage | None:
    return owned_row(session, UploadedImage, image_id, owner_id)


def list_images(
    session: Session, *, owner_id: str, limit: int = 20, offset: int = 0
) -> tuple[list[UploadedImage], int]:
    return owned_page(session, UploadedImage, owner_id=owner_id, limit=limit, offset=offset)


def delete_image(session: Session, *, image_id: str, owner_id: str) -> UploadedImage | None:
    """Delete the row and return it (its storage key tells the caller what to remove); None if not the owner's.
    A queued generation that names a deleted image fails with a message naming it (the worker reads it)."""
    img = get_image(session, image_id=image_id, owner_id=owner_id)
    if img is None:
        return None
    session.delete(img)
    session.commit()
    return img
