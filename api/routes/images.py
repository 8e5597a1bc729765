"""/v1/images: upload reference images (the inputs of editing and personalisation), list, read, download, delete.

A generation names them in `reference_images`; only the owner's own ids are accepted there (others are 404)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import CurrentOwner, ImageId, PageDep, SessionDep, SettingsDep, StoreDep, not_found
from api.errors import ApiError, error_responses
from api.files import send_artifact
from api.image_upload import MIME, SUFFIX, read_reference_image
from api.schemas import ReferenceImagePublic, ReferenceImagesPublic
from api.uploads import UploadError
from db.images import create_image, delete_image, get_image, list_images, new_image_id
from db.models import UploadedImage

router = APIRouter(prefix="/v1/images", tags=["images"], responses=error_responses(401, 422, 503))


def to_public(img: UploadedImage) -> ReferenceImagePublic:
    return ReferenceImagePublic(
        id=img.id,
        name=img.name,
        format=img.format,
        width=img.width,
        height=img.height,
        size_bytes=img.size_bytes,
        created_at=img.created_at,
    )


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=ReferenceImagePublic, responses=error_responses(413)
)
async def upload_image(
    owner: CurrentOwner,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    file: Annotated[UploadFile, File(description="one PNG, JPEG or WebP image")],
):
    """Upload one image to use as a reference of generations (`reference_images`).

    The same checks as a dataset image: PNG/JPEG/WebP only, at most the per-file byte limit (413) and the pixel
    limit (413), and the whole image must decode (422 naming the file otherwise)."""
    name = (file.filename or "image")[:200]
    try:
        data, info = await run_in_threadpool(
            read_reference_image,
            file.file,
            name,
            max_bytes=settings.max_upload_file_bytes,
            max_pixels=settings.max_image_pixels,
        )
    except UploadError as e:
        raise ApiError(e.status, str(e), field="file") from None
    image_id = new_image_id()
    key = f"images/{image_id}{SUFFIX[info.format]}"
    await run_in_threadpool(store.put_bytes, key, data)
    try:
        img = create_image(
            session,
            image_id=image_id,
            owner_id=owner.id,
            name=name,
            storage_key=key,
            format=info.format,
            width=info.width,
            height=info.height,
            size_bytes=len(data),
        )
    except BaseException:
        store.delete_prefix(key)  # no row, no file
        raise
    return to_public(img)


@router.get("", response_model=ReferenceImagesPublic)
def read_images(owner: CurrentOwner, session: SessionDep, page: PageDep):
    """Your uploaded images, newest first."""
    rows, total = list_images(session, owner_id=owner.id, limit=page.limit, offset=page.offset)
    return ReferenceImagesPublic(data=[to_public(r) for r in rows], count=total)


@router.get("/{image_id}", response_model=ReferenceImagePublic, responses=error_responses(404))
def read_image(image_id: ImageId, owner: CurrentOwner, session: SessionDep):
    """One uploaded image's description."""
    img = get_image(session, image_id=image_id, owner_id=owner.id)
    if img is None:
        raise not_found("image", image_id)
    return to_public(img)


@router.get(
    "/{image_id}/file",
    response_class=StreamingResponse,
    responses={
        200: {"content": {m: {} for m in MIME.values()}, "description": "the file as uploaded"},
        **error_responses(404),
    },
)
def read_image_file(image_id: ImageId, owner: CurrentOwner, session: SessionDep, store: StoreDep):
    """The file exactly as uploaded."""
    img = get_image(session, image_id=image_id, owner_id=owner.id)
    if img is None:
        raise not_found("image", image_id)
    return send_artifact(store, img.storage_key, MIME[img.format], filename=img.storage_key.rsplit("/", 1)[-1])


@router.delete("/{image_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
def remove_image(image_id: ImageId, owner: CurrentOwner, session: SessionDep, store: StoreDep):
    """Delete an image and its file (a queued generation naming it then fails, saying which reference is gone)."""
    img = delete_image(session, image_id=image_id, owner_id=owner.id)
    if img is None:
        raise not_found("image", image_id)
    store.delete_prefix(img.storage_key)
