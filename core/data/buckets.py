"""Aspect-ratio buckets: a fixed set of (width, height), multiples of 32, each of area about resolution^2.

    buckets = make_buckets(1024)                 # [(512, 2048)?, ..., (1024, 1024), ..., (1792, 576), ...]
    w, h = nearest_bucket(4032, 3024, buckets)   # (1184, 896): closest aspect ratio

Images of one bucket share a shape, so they batch without padding or distortion. One fixed set (rather than
snapping every image on its own) keeps the number of distinct shapes small, so batches fill up.
"""
from __future__ import annotations

import math

MULTIPLE = 32          # the model's patch size: image sides must be multiples of it
MAX_ASPECT = 3.0       # wider than 3:1 is cropped to 3:1; beyond it the few tokens on the short side hurt


def make_buckets(resolution: int, max_aspect: float = MAX_ASPECT, multiple: int = MULTIPLE) -> list[tuple[int, int]]:
    """Every width that is a multiple of `multiple`, paired with the multiple-of height whose area is closest
    to resolution^2, within [1/max_aspect, max_aspect]. Sorted by aspect ratio (w/h)."""
    if not isinstance(resolution, int) or resolution < multiple:
        raise ValueError(f"resolution must be an integer >= {multiple}, got {resolution!r}")
    if max_aspect < 1:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
    area = resolution * resolution
    tall = {}
    # Walk the widths of the tall half (w <= h); the wide half is its mirror, so the set is symmetric.
    for w in range(multiple, resolution + 1, multiple):
        h = max(multiple, round(area / w / multiple) * multiple)
        if h >= w and h / w <= max_aspect + 1e-9:
            if h not in tall or abs(w * h - area) < abs(tall[h] * h - area):
                tall[h] = w
    square = max(multiple, round(resolution / multiple) * multiple)   # square images must not be cropped
    out = {(w, h) for h, w in tall.items()} | {(h, w) for h, w in tall.items()} | {(square, square)}
    return sorted(out, key=lambda b: b[0] / b[1])


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket with the closest aspect ratio (in log space, so 2:1 and 1:2 are equally far from 1:1)."""
    target = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - target), -b[0] * b[1]))
