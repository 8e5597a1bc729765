"""Opening one image safely: allow-listed formats, a pixel limit checked from the header, EXIF, RGB on white.

    info = probe(data, name)                      # header only: format, oriented (width, height)
    img = load_rgb(data, name, max_pixels=64e6)   # PIL RGB, orientation applied, alpha composited on white

Both raise ImageProblem with a short reason; the validator reports it next to the file name.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

FORMATS = ("PNG", "JPEG", "WEBP")
EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
DEFAULT_MAX_PIXELS = 64_000_000
_ROTATED = {5, 6, 7, 8}   # EXIF orientations that swap width and height


class ImageProblem(ValueError):
    """Why one file cannot be used: `kind` is 'unreadable' or 'huge'."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int    # after EXIF orientation
    height: int


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow's global bomb check warns/raises on its own limit; ours is explicit and per call.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:
        # Pillow's message names its own (larger) limit; only ours is the user's business.
        raise ImageProblem("huge", f"image is over the limit of {_pixels(max_pixels, max_pixels)}") from e
    except Image.UnidentifiedImageError as e:
        raise ImageProblem("unreadable", "not a readable PNG/JPEG/WebP image (unrecognised or corrupt data)") from e
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad bytes; all mean "unreadable"
        raise ImageProblem("unreadable", f"not a readable PNG/JPEG/WebP image ({type(e).__name__}: "
                                         f"{_OBJECT_REPR.sub('the data', str(e))})") from e
    w, h = img.size
    if w * h > max_pixels:
        raise ImageProblem("huge", f"{w}x{h} = {_pixels(w * h, max_pixels)} is over the limit of "
                                   f"{_pixels(max_pixels, max_pixels)}")
    if w < 1 or h < 1:
        raise ImageProblem("unreadable", f"empty image ({w}x{h})")
    return img


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")  # Pillow names its BytesIO: no use to a user


def _pixels(n: int, limit: int) -> str:
    """A pixel count in the unit its limit reads best in: MP for limits of 10 MP and more, else pixels."""
    return f"{n / 1e6:.0f} MP" if limit >= 10_000_000 else f"{n} pixels"


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block should not make the picture unusable
        return 1


def probe(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Header-only look: format and oriented size. Cheap; never decodes the pixels."""
    img = _open(data, max_pixels)
    w, h = img.size
    if _orientation(img) in _ROTATED:
        w, h = h, w
    # Phone cameras write MPO (a JPEG with extra frames, e.g. depth); its first frame is the plain JPEG photo.
    return ImageInfo("JPEG" if img.format == "MPO" else img.format, w, h)


def load_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
             draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode to RGB with EXIF orientation applied and transparency composited on white.

    draft_size (oriented width, height): lets JPEG decode at a reduced scale that still covers it, which
    makes big photos several times cheaper when training at a small resolution.
    """
    img = _open(data, max_pixels)
    try:
        if draft_size is not None and img.format == "JPEG":
            dw, dh = draft_size
            if _orientation(img) in _ROTATED:
                dw, dh = dh, dw
            img.draft("RGB", (dw, dh))
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I"):
            # 16-bit greyscale PNGs: Pillow's convert("RGB") clips them to white; scale 0..65535 to 0..255.
            arr = np.asarray(img).astype(np.float64)
            img = Image.fromarray(np.clip(arr / 257.0 if arr.max() > 255 else arr, 0, 255).round().astype(np.uint8))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba)
        return img.convert("RGB")
    except ImageProblem:
        raise
    except Exception as e:  # noqa: BLE001 - truncated/corrupt data surfaces here, as any of several types
        raise ImageProblem("unreadable", f"cannot decode the image ({type(e).__name__}: {e})") from e

