"""Training on reference images runs the frozen vision tower once per sample (and flip), not once per step: its
features are cached (core.train.vision_cache), and a cached step computes exactly the uncached one."""

from __future__ import annotations

import pytest
import torch
from test_train_references import config, pairs, tiny  # noqa: F401  (fixtures)

from core.train import Trainer
from core.train.vision_cache import VisionCache


def counting(trainer) -> list:
    """Record every run of the real vision tower on this trainer's model."""
    calls, real = [], trainer.model.vision_features

    def tower(pixel_values, image_grid_thw):
        calls.append(pixel_values.shape[0])
        return real(pixel_values, image_grid_thw)

    trainer.model.vision_features = tower
    return calls


@pytest.mark.parametrize("flip", [False, True])
def test_the_tower_runs_once_per_sample_and_flip_over_epochs(tiny, pairs, tmp_path, flip):  # noqa: F811
    trainer = Trainer(config(tiny, pairs, tmp_path / "run", steps=8, batch_size=2, flip=flip))
    calls = counting(trainer)
    seen = []
    batches = iter(trainer.data)

    def recording():
        for images, captions, refs, keys in batches:
            seen.extend(keys)
            yield images, captions, refs, keys

    stream = recording()
    for _ in range(8):  # 16 samples: 4 epochs of the 4 pairs
        trainer.train_step(stream)
    distinct = set(seen)
    assert len(seen) == 16 and len(distinct) == (len(calls)) and len(calls) <= (8 if flip else 4)
    assert len(calls) < len(seen) and trainer.vision_cache.misses == len(calls)
    assert trainer.vision_cache.hits == len(seen) - len(calls)
    if not flip:
        assert len(calls) == 4  # one per pair, whatever the number of epochs


def test_cached_steps_equal_uncached_ones(tiny, pairs, tmp_path):  # noqa: F811
    cached = Trainer(config(tiny, pairs, tmp_path / "a", steps=6, flip=True))
    plain = Trainer(config(tiny, pairs, tmp_path / "b", steps=6, flip=True))
    plain.vision_cache = None  # every step runs the tower, as before the cache
    calls = counting(plain)
    a, b = iter(cached.data), iter(plain.data)
    losses_a = [cached.train_step(a) for _ in range(6)]
    losses_b = [plain.train_step(b) for _ in range(6)]
    assert len(calls) == 12 and cached.vision_cache.hits > 0  # the cached run reused features
    assert all(torch.equal(x, y) for x, y in zip(losses_a, losses_b)), (losses_a, losses_b)
    wa = {n: p for n, p in cached.model.named_parameters() if p.requires_grad}
    wb = {n: p for n, p in plain.model.named_parameters() if p.requires_grad}
    assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)


def test_bounds_keep_the_device_part_and_drop_the_least_recently_used_host_entries():
    def features(v: float):  # 4 x 8 float32 embeds + two DeepStack layers: 384 bytes
        return torch.full((4, 8), v), [torch.full((4, 8), v + 0.5), torch.full((4, 8), v + 0.25)]

    cache = VisionCache("cpu", device_bytes=384, host_bytes=2 * 384)
    runs = []

    def get(k):
        return cache.get(k, lambda: runs.append(k) or features(float(k)))

    for k in (0, 1, 2):
        get(k)
    assert (cache.used_device, cache.used_host, len(cache)) == (384, 768, 3)
    get(1)  # 1 becomes the most recently used host entry
    get(3)  # over the host bound: 2, the least recently used, goes
    assert len(cache) == 3 and runs == [0, 1, 2, 3]
    get(0), get(1), get(3)
    assert runs == [0, 1, 2, 3]  # the device entry and the kept host entries are hits
    emb, deep = get(2)
    assert runs[-1] == 2 and torch.equal(emb, torch.full((4, 8), 2.0)) and torch.equal(deep[1], emb + 0.25)
    too_big = VisionCache("cpu", device_bytes=0, host_bytes=100)
    too_big.get("x", lambda: features(1.0))
    assert len(too_big) == 0  # larger than the whole bound: computed, not kept
