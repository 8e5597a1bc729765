"""How clean the background of a generated scene is: the speckle measure.

    speckle(img, scene_or_labels)   # RMS colour error of the background, in 0-255 levels; a render scores 0

A render's background is one flat colour. The first bundled model left coloured speckle in the 32-px patches
around its shapes (and faint patch seams), which the prompt-following checks never see: they only ask
whether a cell holds more than 3% foreground. This measure looks at every pixel that should be background:
all of the cells the caption left empty, and, in the cells it names, the pixels more than GAP px away from
anything that differs from the background (the shape and its blurred edge are left out; faint noise around
it is kept). It returns the root mean square RGB distance of those pixels from the background colour.
"""

from __future__ import annotations

import numpy as np

from .measure import _array, background_colour, cell, foreground
from .scene import Scene
from .vocab import REGIONS

GAP = 3  # px kept around a named cell's foreground: the anti-aliased rim of a shape is not speckle


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    padded = np.pad(mask, k)
    h, w = mask.shape
    for dy in range(2 * k + 1):
        for dx in range(2 * k + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def background_pixels(arr: np.ndarray, labels: dict) -> np.ndarray:
    """Boolean mask of the pixels that should show the plain background."""
    bg = background_colour(arr)
    named = {s["region"] for s in labels["shapes"]}
    keep = np.zeros(arr.shape[:2], dtype=bool)
    for region in REGIONS:
        view = cell(keep, region)  # a view: writing into it writes into `keep`
        if region in named:
            view[...] = ~_dilate(foreground(cell(arr, region), bg), GAP)
        else:
            view[...] = True
    return keep


def speckle(img, scene: Scene | dict) -> float:
    """RMS distance (0-255 RGB levels) of the should-be-background pixels from the background colour."""
    labels = scene.labels() if isinstance(scene, Scene) else scene
    arr = _array(img)
    mask = background_pixels(arr, labels)
    if not mask.any():
        return 0.0
    d2 = ((arr[mask] - background_colour(arr)) ** 2).sum(axis=-1)
    return float(np.sqrt(d2.mean()))
