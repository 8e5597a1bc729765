"""SynthDataset: an endless, deterministic stream of captioned shape scenes as training items.

    ds = SynthDataset(n=100_000, size=128, seed=0, style="plain")
    ds[k]   # {"image": float32 (3, size, size) in [-1, 1], "caption": str, "name": "synth-000123", "labels": {...}}
    SynthDataset(sizes=(128, 192, 256))   # each key gets one of these sides; BucketBatchSampler groups them

Item k is scene k of stream `seed` (any k >= 0, not only k < n: n only sets what one epoch is), drawn
and rendered on the fly in ~1-3 ms, so pretraining sees a fresh scene at every step and needs no files.
It has the TrainDataset interface that BucketBatchSampler and core.data.collate_batch use (len, bucket).
"""

from __future__ import annotations

import random

from torch.utils.data import Dataset

from ..data.transforms import to_tensor
from .render import STYLES, render
from .scene import Scene, sample_scene
from .vocab import REGIONS


class SynthDataset(Dataset):
    def __init__(
        self,
        n: int = 100_000,
        size: int = 128,
        seed: int = 0,
        style: str = "plain",
        trigger: str = "",
        two_shape_prob: float = 0.5,
        regions: tuple[str, ...] = tuple(REGIONS),
        sizes: tuple[int, ...] | None = None,
    ):
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; one of {STYLES}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        self.sizes = tuple(sizes) if sizes else (size,)
        for sz in self.sizes:
            if not isinstance(sz, int) or sz < 32 or sz % 32:
                raise ValueError(f"size must be a multiple of 32 (the model's patch), got {sz!r}")
        unknown = [r for r in regions if r not in REGIONS]
        if unknown:
            raise ValueError(f"unknown regions {unknown}; choose from {list(REGIONS)}")
        self.n, self.size, self.seed, self.style, self.trigger = n, size, seed, style, trigger
        self.two_shape_prob, self.regions = two_shape_prob, tuple(regions)

    def __len__(self) -> int:
        return self.n

    def bucket(self, key: int) -> tuple[int, int]:
        """Square side of item `key`; a function of key % n, so every epoch has the same bucket sizes."""
        if len(self.sizes) == 1:
            side = self.sizes[0]
        else:
            side = random.Random(f"o1lora-synth-size:{self.seed}:{key % self.n}").choice(self.sizes)
        return (side, side)

    def scene(self, key: int) -> Scene:
        return sample_scene(self.seed, key, self.two_shape_prob, self.regions)

    def __getitem__(self, key: int) -> dict:
        if key < 0:
            raise IndexError(f"key must be >= 0, got {key}")
        scene = self.scene(key)
        image = to_tensor(render(scene, self.bucket(key)[0], self.style))
        return {
            "image": image,
            "caption": scene.caption(self.trigger),
            "name": f"synth-{key:06d}",
            "labels": scene.labels(),
        }
