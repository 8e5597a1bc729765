"""TrainDataset: the usable images of a source, fitted to aspect buckets, with trigger, dropout and flips.

    ds = TrainDataset("photos.zip", resolution=1024, trigger="sks style", repeats=10, flip=True,
                      caption_dropout=0.05, min_side=256, seed=0)
    ds.report                       # the DatasetReport of the validation it ran (raises DatasetError if unusable)
    item = ds[k]                    # {"image": float32 (3, H, W) in [-1, 1], "caption": str, "name": str,
                                    #  "references": [PIL RGB, ...] (edit / personalisation samples; else []),
                                    #  "reference_key": (name, flipped) with references, else None}
    batch = collate_batch([ds[k] for k in keys])   # {"images": (B, 3, H, W), "captions": [...], "names": [...],
                                                   #  "references": [[PIL, ...] per item], "reference_keys": [...]}

References are handed over as decoded RGB images at their own size: the official resizing depends on the
target's size and on how many references there are, so core.layout.prepare_references does it, as at inference.
A flipped sample mirrors its references too (the pair stays consistent). reference_dropout drops all of a
sample's references (from (seed, key) like the other draws), so a LoRA also keeps working without them.

Keys: index k maps to image k % len(ds) (len(ds) = images x repeats); flips and caption dropout are drawn
from (seed, k) alone, never from a global RNG, so an item is the same in any process and after a resume.
BucketBatchSampler (sampler.py) hands out keys epoch * len(ds) + j, so each epoch re-draws the augmentations.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import DEFAULT_MAX_PIXELS, load_rgb
from .sources import Source, SourceLimits
from .transforms import EMPTY_PROMPT, fit_to_size, to_tensor, with_trigger
from .validate import Record, check, scan

REG_FOLDER = "reg"


def is_regularisation(name: str) -> bool:
    """Images in a top-level reg/ folder are regularisation images: they train on their own caption, without
    the trigger, so the LoRA learns to leave prompts without its trigger as the base model draws them."""
    return name.replace("\\", "/").split("/", 1)[0] == REG_FOLDER and "/" in name.replace("\\", "/")


_SIDES = re.compile(r"\b(left|right)\b", re.IGNORECASE)


class TrainDataset(Dataset):
    def __init__(self, source: str | Path | Source, resolution: int = 1024, trigger: str = "", repeats: int = 1,
                 flip: bool = False, caption_dropout: float = 0.0, min_side: int | None = None, seed: int = 0,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_aspect: float = 3.0, cache: bool = False,
                 limits: SourceLimits = SourceLimits(), reference_dropout: float = 0.0):
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {caption_dropout!r}")
        if not 0.0 <= reference_dropout <= 1.0:
            raise ValueError(f"reference_dropout must be in [0, 1], got {reference_dropout!r}")
        self.reference_dropout = reference_dropout
        self.source, self.report, records = scan(source, resolution, min_side, max_pixels, limits, max_aspect)
        check(self.report)
        self.records: list[Record] = records
        self.resolution, self.trigger, self.repeats = resolution, trigger, repeats
        self.flip, self.caption_dropout, self.seed = flip, caption_dropout, seed
        self.max_pixels = max_pixels
        # A mirrored image contradicts "on the left", and rewriting the words is unsafe ("all right", "right
        # away"): an image whose caption names a side is never flipped. The trainer shows the report's warnings.
        sided = [r.name for r in records if r.caption and _SIDES.search(r.caption)]
        self._unflippable = frozenset(sided)
        if flip and sided:
            self.report.warnings.append(f"flip is on but {len(sided)} caption(s) say left or right "
                                        f"(e.g. {sided[0]}); those images are not flipped")
        self.cache = cache
        self._cache: dict[int, bytes] = {}   # record index -> fitted RGB bytes (cache=True)

    def subset(self, names: set[str], *, keep: bool, plain: bool = False) -> "TrainDataset":
        """The same dataset restricted to the records named (keep=True) or to all the others (keep=False).
        plain=True: one pass, no flips, no caption or reference dropout (a validation set sees each image as it
        is)."""
        import copy

        out = copy.copy(self)
        out.records = [r for r in self.records if (r.name in names) == keep]
        if not out.records:
            raise ValueError("no image left in the dataset after holding images out for validation")
        out._cache = {}                       # keyed by record index, which changed
        if plain:
            out.repeats, out.flip, out.caption_dropout, out.reference_dropout = 1, False, 0.0, 0.0
        return out

    def __len__(self) -> int:
        return len(self.records) * self.repeats

    def bucket(self, key: int) -> tuple[int, int]:
        """(width, height) of the item at `key`, without loading it (the sampler groups by this)."""
        return self.records[key % len(self.records)].bucket

    def _draws(self, key: int) -> tuple[bool, bool]:
        """(drop the caption, flip) for `key`: a function of (seed, key) only."""
        rng = np.random.default_rng([self.seed, int(key)])
        drop = bool(rng.random() < self.caption_dropout)
        flip = bool(rng.random() < 0.5) and self.flip
        return drop, flip and self.records[key % len(self.records)].name not in self._unflippable

    @property
    def has_references(self) -> bool:
        return any(r.references for r in self.records)

    def references_dropped(self, key: int) -> bool:
        """Whether the item at `key` trains without its references (drawn from (seed, key, "ref") only)."""
        if self.reference_dropout <= 0:
            return False
        return bool(np.random.default_rng([self.seed, int(key), 1]).random() < self.reference_dropout)

    def references(self, key: int, flip: bool = False) -> list[Image.Image]:
        """The decoded reference images of the item at `key` (mirrored with a flipped sample); [] when it has
        none or they are dropped out."""
        rec = self.records[key % len(self.records)]
        if not rec.references or self.references_dropped(key):
            return []
        out = [load_rgb(self.source.read(name), self.max_pixels) for name in rec.references]
        return [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in out] if flip else out

    def caption(self, key: int) -> str:
        """The caption the item at `key` trains on (trigger prepended, except under reg/; " " when dropped out)."""
        if self._draws(key)[0]:
            return EMPTY_PROMPT
        rec = self.records[key % len(self.records)]
        if is_regularisation(rec.name):
            return rec.caption or EMPTY_PROMPT
        return with_trigger(rec.caption, self.trigger)

    def _fitted(self, idx: int):
        rec = self.records[idx]
        if idx in self._cache:
            return Image.frombytes("RGB", rec.bucket, self._cache[idx])
        img = fit_to_size(load_rgb(self.source.read(rec.name), self.max_pixels, draft_size=rec.bucket), rec.bucket)
        if self.cache:
            self._cache[idx] = img.tobytes()
        return img

    def __getitem__(self, key: int) -> dict:
        if key < 0:
            raise IndexError(f"key must be >= 0, got {key}")
        rec_idx = key % len(self.records)
        _, flip = self._draws(key)
        img = self._fitted(rec_idx)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = to_tensor(img)
        refs = self.references(key, flip)
        name = self.records[rec_idx].name
        # what the references' prepared inputs depend on besides the target's size: the sample and its flip
        return {"image": x, "caption": self.caption(key), "name": name, "references": refs,
                "reference_key": (name, flip) if refs else None}


def collate_batch(items: list[dict]) -> dict:
    """Stack items of one bucket into a batch."""
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) != 1:
        raise ValueError(f"a batch must hold images of one shape (use BucketBatchSampler); got {sorted(shapes)}")
    return {"images": torch.stack([it["image"] for it in items]),
            "captions": [it["caption"] for it in items],
            "names": [it["name"] for it in items],
            "references": [it.get("references", []) for it in items],
            "reference_keys": [it.get("reference_key") for it in items]}
