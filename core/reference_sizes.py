"""The official resizing of reference images as arithmetic on sizes alone: no torch, no pixels.

    from core.reference_sizes import reference_tokens
    reference_tokens([(800, 600)], height=1024, width=1024)   # -> [ReferenceTokens(vision=..., patches=...)]

Each reference enters the sequence twice (../shared/design/hidream-o1.md, "Reference images"): downscaled
through the vision tower as image placeholders in the prompt (AR tokens, with vision_start / vision_end
around them), and as raw 32 px patches after the target (generation tokens). How large each copy is depends
on the image's aspect, the target's size and how many references there are. core.layout resizes the pixels
with these very functions, so the counts here are the sequence the sampler and the trainer build; the API
(which imports no torch) prices a request with them, the worker's memory plan sizes a job with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PATCH = 32
CONDITION_SIZE = 384  # side of the (square-area) image the vision tower sees per reference, for K <= 4
VISION_PATCH, VISION_TEMPORAL, VISION_MERGE = 16, 2, 2  # Qwen3-VL vision tower
VISION_MIN_PIXELS, VISION_MAX_PIXELS = 65536, 16777216  # the Qwen3-VL image processor's bounds
VISION_MARKERS = 2  # <|vision_start|> and <|vision_end|> around each reference's placeholders


def reference_side(k: int, height: int, width: int) -> int:
    """Side of the square area each raw reference is resized to: smaller as references multiply."""
    side = max(height, width)
    if k <= 1:
        return side
    if k == 2:
        return side * 48 // 64
    if k <= 4:
        return side // 2
    if k <= 8:
        return side * 24 // 64
    return side // 4


def condition_side(k: int) -> int:
    """Side of the area the vision tower sees per reference."""
    return CONDITION_SIZE if k <= 4 else CONDITION_SIZE * 48 // 64 if k <= 8 else CONDITION_SIZE // 2


def halved_size(w: int, h: int, side: int) -> tuple[int, int]:
    """The size after resize_to_area's cheap box halvings of a large image (each one floors)."""
    while min(w, h) >= 2 * side:
        w, h = w // 2, h // 2
    return w, h


def area_size(w: int, h: int, side: int, multiple: int = PATCH, *, original: tuple[int, int] | None = None):
    """(width, height) a w x h image (already halved from `original`) is resized and cropped to: at most
    side*side pixels, each side a multiple of `multiple` (the official resize_pilimage choice among round /
    floor)."""
    limit = side * side
    s = math.sqrt(limit / (w * h))
    options = [
        (fw(w * s) // multiple * multiple, fh(h * s) // multiple * multiple)
        for fw in (round, math.floor)
        for fh in (round, math.floor)
    ]
    options.sort(key=lambda wh: wh[0] * wh[1], reverse=True)
    tw, th = next((o for o in options if o[0] * o[1] <= limit), options[-1])
    if tw <= 0 or th <= 0:
        ow, oh = original or (w, h)
        raise ValueError(f"reference image {ow}x{oh} is too small/thin for a {side} px area at {multiple} px")
    return tw, th


def vision_size(side: int, ratio: float, multiple: int = VISION_PATCH * VISION_MERGE) -> tuple[int, int]:
    """(width, height) of ~side*side pixels at aspect `ratio` = w/h, floored to `multiple`."""
    w = math.sqrt(side * side * ratio)
    h = w / ratio
    return int(w / multiple) * multiple, int(h / multiple) * multiple


def condition_size(cond: int, w: int, h: int) -> tuple[int, int]:
    """(width, height) the w x h raw reference is resized to for the vision tower; ValueError when one side
    would be 0 (an aspect too extreme for the tower's small area, which the official code does not catch)."""
    vw, vh = vision_size(cond, w / h)
    if vw <= 0 or vh <= 0:
        raise ValueError(
            f"reference image resized to {w}x{h} is too thin for the vision tower's {cond} px area "
            f"(aspect {max(w / h, h / w):.0f}:1)"
        )
    return vw, vh


def vision_bounds(w: int, h: int, factor: int = VISION_PATCH * VISION_MERGE) -> tuple[int, int]:
    """The image processor's own size rule: round to `factor`, then scale into [min, max] pixels."""
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > VISION_MAX_PIXELS:
        beta = math.sqrt(h * w / VISION_MAX_PIXELS)
        hb, wb = (
            max(factor, math.floor(h / beta / factor) * factor),
            max(factor, math.floor(w / beta / factor) * factor),
        )
    elif hb * wb < VISION_MIN_PIXELS:
        beta = math.sqrt(VISION_MIN_PIXELS / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return wb, hb


class ReferenceSizeError(ValueError):
    """A reference the official resizing cannot fit to the target: which one (0-based) and why."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"reference {index}: {reason}")
        self.index, self.reason = index, reason


@dataclass(frozen=True)
class ReferenceTokens:
    """What one reference adds to a sequence."""

    vision: int  # AR tokens in the prompt: the merged vision grid + its two markers
    patches: int  # generation tokens after the target: the raw 32 px grid

    @property
    def total(self) -> int:
        return self.vision + self.patches


def reference_tokens(sizes: list[tuple[int, int]], height: int, width: int) -> list[ReferenceTokens]:
    """Token counts of references of (width, height) `sizes` (as decoded: EXIF orientation applied) for a
    height x width target; ReferenceSizeError naming the reference that cannot be resized."""
    k = len(sizes)
    if not k:
        return []
    side, cond = reference_side(k, height, width), condition_side(k)
    out = []
    for i, (w, h) in enumerate(sizes):
        try:
            tw, th = area_size(*halved_size(int(w), int(h), side), side, original=(w, h))
            vw, vh = vision_bounds(*condition_size(cond, tw, th))
        except ValueError as e:
            raise ReferenceSizeError(i, str(e)) from None
        merged = (vh // VISION_PATCH // VISION_MERGE) * (vw // VISION_PATCH // VISION_MERGE)
        out.append(ReferenceTokens(vision=merged + VISION_MARKERS, patches=(th // PATCH) * (tw // PATCH)))
    return out


def total_reference_tokens(sizes: list[tuple[int, int]], height: int, width: int) -> int:
    """All the tokens `sizes` add to one sequence (0 without references)."""
    return sum(r.total for r in reference_tokens(sizes, height, width))
