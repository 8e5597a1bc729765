"""How much an image looks like the "outlined" style: a bold dark contour around each shape, not a dark shape.

    outline_score(img)   # ~1 for outlined renders, 0 for plain ones and for shapes merely darkened

Read with plain numpy, like the other measures, one 3x3 cell at a time (a cell holds at most one shape): the
foreground is what differs from the background; its rim is the band within RIM px of the background, its
centre the deepest pixels (depth >= 70% of the deepest). A cell's score is the ink share of the rim minus the
ink share of the centre, full at RIM_FULL; the image's score is the mean over cells that hold something. A
contour puts ink on the rim only; a LoRA that merely darkens the shapes darkens rim and centre alike and
scores ~0, so this measures the style and not "darker".
"""

from __future__ import annotations

import numpy as np

from .measure import MIN_FG_FRACTION, _array, _dark, _erode, background_colour, cell, foreground
from .vocab import REGIONS

RIM_FULL = 0.6  # rim ink share minus centre ink share at which a cell's score is full


def _depth(mask: np.ndarray) -> np.ndarray:
    """How many 1-px erosions each pixel survives (0 outside the mask)."""
    depth, cur = np.zeros(mask.shape, dtype=np.int32), mask.copy()
    while cur.any():
        depth += cur
        cur = _erode(np.pad(cur, 1), 1)[1:-1, 1:-1]
    return depth


def cell_outline(arr: np.ndarray, bg: np.ndarray, rim_px: int) -> float | None:
    fg = foreground(arr, bg)
    if fg.mean() < MIN_FG_FRACTION:
        return None
    depth, dark = _depth(fg), _dark(arr)
    rim = (depth >= 1) & (depth <= rim_px)
    centre = depth >= max(rim_px + 1, int(np.ceil(0.7 * depth.max())))
    rim_ink = float(dark[rim].mean()) if rim.any() else 0.0
    centre_ink = float(dark[centre].mean()) if centre.any() else 1.0  # all rim and no centre: a dark blot
    return float(np.clip((rim_ink - centre_ink) / RIM_FULL, 0.0, 1.0))


def outline_score(img) -> float:
    """0..1, the mean over cells holding something (0 when none does)."""
    arr = _array(img)
    bg = background_colour(arr)
    rim_px = max(2, round(2 * arr.shape[0] / 128))  # 2 px at 128 px, scaled with the image
    scores = [s for r in REGIONS if (s := cell_outline(cell(arr, r), bg, rim_px)) is not None]
    return float(np.mean(scores)) if scores else 0.0
