"""Pixels and captions for training: fit an image to its bucket, to a [-1, 1] tensor; trigger and dropout.

    img = fit_to_size(pil_rgb, (w, h))     # scale to cover, centre crop; one resample from the source
    x = to_tensor(img)                     # float32 (3, h, w) in [-1, 1], the model's x/127.5 - 1
    caption = with_trigger("a red cube", "sks style")   # "sks style, a red cube"
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:   # torch itself is imported where it is used: validation must not load it
    import torch

EMPTY_PROMPT = " "   # the unconditional prompt the model was trained with (caption dropout trains on it)


def cover_scale(width: int, height: int, size: tuple[int, int]) -> float:
    """Scale factor at which (width, height) just covers `size`."""
    return max(size[0] / width, size[1] / height)


def fit_to_size(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Keep the aspect ratio: the centred crop of `img` with the aspect of `size`, resampled to `size`."""
    w, h = img.size
    s = cover_scale(w, h, size)
    cw, ch = size[0] / s, size[1] / s          # crop box in source pixels
    left, top = (w - cw) / 2, (h - ch) / 2
    # Resizing with a box resamples straight from the crop region: no intermediate image, no double filtering.
    return img.resize(size, Image.Resampling.LANCZOS, box=(left, top, left + cw, top + ch), reducing_gap=3.0)


def to_tensor(img: Image.Image) -> torch.Tensor:
    import torch  # lazily: the API validates uploads with this package and must not load torch
    # numpy does the arithmetic: torch's intra-op threads cost milliseconds per tiny image on a busy CPU,
    # and this runs in DataLoader workers next to the training process.
    arr = np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1))
    arr *= 1 / 127.5
    arr -= 1.0
    return torch.from_numpy(arr)


def to_pil(x: torch.Tensor) -> Image.Image:
    """Inverse of to_tensor (for previews and tests)."""
    import torch
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def with_trigger(caption: str | None, trigger: str) -> str:
    """Prepend the trigger phrase; a missing caption trains on the trigger alone. A caption that already
    contains the trigger as a whole phrase (users often write it in) is left as is rather than doubled."""
    trigger = " ".join(trigger.split())
    caption = caption or ""
    if not trigger:
        return caption or EMPTY_PROMPT
    if not caption:
        return trigger
    if re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption, re.IGNORECASE):
        return caption
    return f"{trigger}, {caption}"


def without_trigger(caption: str | None, trigger: str) -> str:
    """The caption with the trigger phrase taken out (as a whole phrase, with the comma that joined it), what the
    base model is asked to draw for a prior image; EMPTY_PROMPT when nothing is left."""
    trigger = " ".join(trigger.split())
    caption = " ".join((caption or "").split())
    if trigger:
        phrase = re.escape(trigger)
        caption = re.sub(rf"(?<!\w){phrase}(?!\w)\s*,?\s*|,?\s*(?<!\w){phrase}(?!\w)", "", caption, flags=re.I)
    caption = caption.strip(" ,")
    return caption or EMPTY_PROMPT
