"""Batches decoded ahead on a thread (core.train.data.Prefetch) change nothing but the timing; compile "auto"."""

from __future__ import annotations

import threading

import pytest
import torch
from test_train import config, flat_images, tiny  # noqa: F401  (module fixtures)

from core.train import TrainConfig, Trainer
from core.train.data import FolderData, Prefetch


def test_prefetch_yields_the_source_batches_in_order(flat_images):  # noqa: F811
    plain = iter(FolderData(flat_images, resolution=64, batch_size=2, min_side=32, flip=True, seed=5))
    ahead = Prefetch(iter(FolderData(flat_images, resolution=64, batch_size=2, min_side=32, flip=True, seed=5)), 2)
    for _ in range(7):  # past two epoch ends (2 batches per epoch)
        (a, ca), (b, cb) = next(plain), next(ahead)
        assert ca == cb and torch.equal(a, b)
    ahead.close()


def test_an_error_in_the_source_is_raised_to_the_consumer_and_close_ends_the_thread():
    def source():
        yield torch.zeros(1, 3, 4, 4), ["a"]
        raise OSError("image 7 is truncated")

    p = Prefetch(source(), 1)
    assert next(p)[1] == ["a"]
    with pytest.raises(OSError, match="truncated"):
        next(p)

    def endless():
        while True:
            yield torch.zeros(1, 3, 4, 4), ["x"]

    blocked = Prefetch(endless(), 1)  # its thread waits on a full queue
    next(blocked)
    blocked.close()
    assert not blocked._thread.is_alive()
    assert not [t for t in threading.enumerate() if t is blocked._thread]


def test_training_with_prefetch_equals_training_without(tiny, flat_images, tmp_path):  # noqa: F811
    runs = {}
    for depth in (0, 2):
        t = Trainer(config(tiny, flat_images, tmp_path / str(depth), steps=4, flip=True, prefetch=depth))
        t.run()
        runs[depth] = {k: v.detach().clone() for k, v in t.model.named_parameters() if ".lora_" in k}
    assert runs[0].keys() == runs[2].keys()
    assert all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_compile_auto_is_off_on_the_cpu_and_bad_values_are_refused(tiny, flat_images, tmp_path):  # noqa: F811
    t = Trainer(config(tiny, flat_images, tmp_path, steps=1))
    assert TrainConfig.compile == "auto" and t.compiled is False
    with pytest.raises(ValueError, match="compile must be"):
        config(tiny, flat_images, tmp_path, compile="yes").validate()
    with pytest.raises(ValueError, match="prefetch must be"):
        config(tiny, flat_images, tmp_path, prefetch=-1).validate()
