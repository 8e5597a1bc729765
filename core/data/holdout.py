"""Which images of a dataset are held out of training for validation (torch-free).

    names = held_out_names(["a.png", "b.png", ...], fraction=None, max_images=4)   # auto: none below 20 images

The choice depends on the file names alone (a hash of each, not the training seed nor the listing order), so
a resumed run, a run with another seed and a re-upload of the same files hold out the same images, and
validation losses of those runs compare.
"""
from __future__ import annotations

import hashlib

AUTO_MIN_IMAGES = 20      # below this, auto holds nothing out: a tiny dataset cannot spare its images
AUTO_FRACTION = 0.1


def held_out_names(names: list[str], fraction: float | None, max_images: int) -> set[str]:
    """The names to hold out: round(fraction * n) of them (at least 1 when fraction > 0), at most max_images,
    always leaving at least one to train on. fraction None is auto (AUTO_FRACTION from AUTO_MIN_IMAGES up)."""
    n = len(names)
    if fraction is None:
        fraction = AUTO_FRACTION if n >= AUTO_MIN_IMAGES else 0.0
    if fraction <= 0 or n == 0:
        return set()
    k = min(max_images, max(1, round(fraction * n)))
    if k >= n:
        raise ValueError(f"validation_fraction {fraction} holds out {k} of {n} image(s) and leaves none to train "
                         f"on; lower it, or give a separate validation set")
    return set(ranked(names)[:k])


def ranked(names: list[str]) -> list[str]:
    """The names in a fixed pseudo-random order (by a hash of each name): the first ones are held out."""
    return sorted(names, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
