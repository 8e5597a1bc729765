"""How much an image looks like the "shaded" style: each shape lit from above, darker towards its bottom.

    shading_score(img)   # ~1 for shaded renders, 0 for flat ones and for shapes darkened all over

Read with plain numpy, like the other measures, one 3x3 cell at a time (a cell holds at most one shape): the
shape's pixels are the chromatic foreground (measure.dominant_colour's rule, so speckle and greys do not count);
their brightness (the largest channel, which a darker shade of the same colour scales; its 75th percentile, so
that anti-aliased edges do not count) is compared between the top and the bottom third of the shape's height. A cell scores (1 - bottom / top) / (1 - RATIO_FULL), clipped to
0..1; the image's score is the mean over cells that hold something. A LoRA that merely darkens the shapes
darkens top and bottom alike and scores ~0, so this measures the style and not "darker".
"""

from __future__ import annotations

import numpy as np

from .measure import MIN_FG_FRACTION, _array, background_colour, cell, foreground
from .vocab import REGIONS

RATIO_FULL = 0.7  # bottom / top brightness at which a cell's score is full (the render's style gives ~0.6)


def cell_shading(arr: np.ndarray, bg: np.ndarray) -> float | None:
    fg = foreground(arr, bg)
    if fg.mean() < MIN_FG_FRACTION:
        return None
    px = arr.astype(np.float32)
    mx, mn = px.max(axis=-1), px.min(axis=-1)
    shape = fg & (mx >= 60) & ((mx - mn) / np.maximum(mx, 1) > 0.35)
    rows = np.nonzero(shape.any(axis=1))[0]
    if len(rows) < 3:
        return 0.0
    top_end = rows[0] + (rows[-1] - rows[0] + 1) / 3
    bottom_start = rows[-1] + 1 - (rows[-1] - rows[0] + 1) / 3
    ys = np.arange(arr.shape[0])[:, None]
    top, bottom = shape & (ys < top_end), shape & (ys >= bottom_start)
    if not top.any() or not bottom.any():
        return 0.0
    # the 75th percentile: the darker anti-aliased rim (a larger share of a narrow bottom, a star's legs) is ignored
    ratio = float(np.percentile(mx[bottom], 75) / max(np.percentile(mx[top], 75), 1.0))
    return float(np.clip((1.0 - ratio) / (1.0 - RATIO_FULL), 0.0, 1.0))


def shading_score(img) -> float:
    """0..1, the mean over cells holding something (0 when none does)."""
    arr = _array(img)
    bg = background_colour(arr)
    scores = [s for r in REGIONS if (s := cell_shading(cell(arr, r), bg)) is not None]
    return float(np.mean(scores)) if scores else 0.0
