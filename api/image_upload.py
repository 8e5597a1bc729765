"""One uploaded reference image: read within the byte limit, then the same checks a dataset image gets (format
allow-list, pixel limit from the header) plus a full decode, so that a stored image is one the worker can open.

    data, info = read_reference_image(upload.file, "cat.jpg", max_bytes=s.max_upload_file_bytes,
                                      max_pixels=s.max_image_pixels)

Any problem raises UploadError naming the file (413 for bytes or pixels over a limit, 422 for the rest).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import BinaryIO

from api.uploads import IMAGE_EXTENSIONS, IMAGE_FORMATS, UploadError

MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


def read_limited(src: BinaryIO, limit: int, name: str) -> bytes:
    """At most `limit` bytes; a longer body is refused (a declared size can lie, the bytes cannot)."""
    data = src.read(limit + 1)
    if len(data) > limit:
        raise UploadError(f"{name}: over the size limit of {limit} bytes", status=413)
    return data


def read_reference_image(src: BinaryIO, name: str, *, max_bytes: int, max_pixels: int):
    """(bytes, core.data.images.ImageInfo) of an acceptable image; UploadError naming `name` otherwise."""
    if PurePosixPath(name.lower()).suffix not in IMAGE_EXTENSIONS:
        raise UploadError(f"{name}: file type not allowed; upload a PNG, JPEG or WebP image")
    data = read_limited(src, max_bytes, name)
    if not data:
        raise UploadError(f"{name}: the file is empty")
    from core.data.images import ImageProblem, load_rgb, probe  # PIL only; lazily, as api/uploads does

    try:
        info = probe(data, max_pixels)
        if info.format not in IMAGE_FORMATS:
            raise UploadError(f"{name}: {info.format} images are not allowed (PNG, JPEG or WebP)")
        load_rgb(data, max_pixels)  # the header can be fine and the pixels truncated: decode them all once
    except ImageProblem as p:
        raise UploadError(f"{name}: {p.reason}", status=413 if p.kind == "huge" else 422) from None
    return data, info
