"""The frozen vision tower's features per training sample, computed once and reused every epoch.

    cache = VisionCache(device)                             # bounded: DEVICE_BYTES on the device, HOST_BYTES on the host
    vision = cache.get((name, flipped, h, w), lambda: frozen_vision(model, batch))

A sample's reference images reach the vision tower as the same pixels every time it comes round (the official
resizing depends only on the images, their number and the target's size; a flipped sample mirrors them, so the
flip is part of the key), and the tower is frozen (LoRA targets the language model; a full fine-tune leaves
model.visual frozen too). So its (embeds, deepstack) output is a function of the key, and recomputing it every
step is wasted work: at full size the tower is 27 layers over each reference. Entries stay on the device while
they fit in `device_bytes` (no copy per step); later ones are kept on the host (pinned with CUDA, copied back
asynchronously) up to `host_bytes`, the least recently used dropped first. The values are the very tensors the
tower gave, so a step with a cached entry computes exactly what it would have without the cache.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

MIB = 2**20
# ~4.7 MB per reference at full size (144 merged tokens x 4096 x (1 + 3 DeepStack layers) in bf16): ~50 on the
# device, ~430 more on the host, enough for the published recipe's ~190 images with a reference and flips.
DEVICE_BYTES = 256 * MIB
HOST_BYTES = 2048 * MIB

Features = tuple[torch.Tensor, list[torch.Tensor]]


def _nbytes(f: Features) -> int:
    return sum(t.numel() * t.element_size() for t in (f[0], *f[1]))


class VisionCache:
    def __init__(self, device, device_bytes: int = DEVICE_BYTES, host_bytes: int = HOST_BYTES):
        self.device = torch.device(device)
        self.device_bytes, self.host_bytes = device_bytes, host_bytes
        self._on_device: dict = {}  # key -> features (never evicted: bounded by device_bytes)
        self._on_host: OrderedDict = OrderedDict()  # key -> features, least recently used first
        self.used_device = self.used_host = 0
        self.hits = self.misses = 0  # tower runs avoided / made

    def __len__(self) -> int:
        return len(self._on_device) + len(self._on_host)

    def get(self, key, compute: Callable[[], Features]) -> Features:
        """The features for `key`, from the cache or from `compute()` (then kept if the bounds allow)."""
        if key in self._on_device:
            self.hits += 1
            return self._on_device[key]
        if key in self._on_host:
            self.hits += 1
            self._on_host.move_to_end(key)
            emb, deep = self._on_host[key]
            return emb.to(self.device, non_blocking=True), [d.to(self.device, non_blocking=True) for d in deep]
        self.misses += 1
        features = compute()
        self._keep(key, features)
        return features

    def _keep(self, key, features: Features) -> None:
        n = _nbytes(features)
        if self.used_device + n <= self.device_bytes:
            self._on_device[key] = features
            self.used_device += n
            return
        if n > self.host_bytes:
            return
        pin = self.device.type == "cuda"  # pinned: the copy back to the GPU does not wait for the host

        def host(t: torch.Tensor) -> torch.Tensor:
            t = t.detach().to("cpu")  # the same tensor when the device is the CPU
            return t.pin_memory() if pin else t

        self._on_host[key] = (host(features[0]), [host(d) for d in features[1]])
        self.used_host += n
        while self.used_host > self.host_bytes:
            _, old = self._on_host.popitem(last=False)
            self.used_host -= _nbytes(old)
