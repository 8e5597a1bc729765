"""Prior images (core/train/prior.py): with a trigger and a dataset without reg/ images, the trainer first has the base
model draw each caption without the trigger, and trains on those images as reg/ images; a resumed run reads them
back. How much they gate a style is measured on the bundled model in docs/evidence.md, section 5."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import EMPTY_PROMPT, without_trigger
from core.data.sources import FolderSource, LayeredSource, SourceError
from core.loading import load_model, load_tokenizer
from core.sampler import Sampler
from core.train import TrainCallbacks, Trainer
from core.train.prior import PRIOR_DIR
from tests.core.train_helpers import tiny_train_config

TRIGGER = "flat style"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from core.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


def dataset(root: Path, captions: list[str | None], reg: int = 0) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, caption in enumerate(captions):
        size = (96, 96) if i % 2 == 0 else (128, 64)  # two buckets at resolution 96
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"img{i}.png")
        if caption is not None:
            (root / f"img{i}.txt").write_text(caption)
    if reg:
        (root / "reg").mkdir()
        for i in range(reg):
            Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(root / "reg" / f"plain{i}.png")
    return root


def test_without_trigger_takes_the_phrase_out():
    assert without_trigger("flat style, a red circle", TRIGGER) == "a red circle"
    assert without_trigger("a red circle, Flat Style", TRIGGER) == "a red circle"
    assert without_trigger("a flat style circle", TRIGGER) == "a circle"
    assert without_trigger("a flat styled circle", TRIGGER) == "a flat styled circle"  # whole phrases only
    assert without_trigger(None, TRIGGER) == without_trigger("flat style", TRIGGER) == EMPTY_PROMPT


def test_the_base_model_draws_each_caption_without_the_trigger_and_they_train_as_reg(tiny, tmp_path):
    captions = ["flat style, red top, blue bottom", "green top, yellow bottom", None]
    data = dataset(tmp_path / "data", captions)
    kw = dict(prior_preservation=True, resolution=96, batch_size=1)
    trainer = Trainer(tiny_train_config(tiny, data, tmp_path / "run", steps=2, checkpoint_every=2, **kw))

    reg = tmp_path / "run" / PRIOR_DIR / "images" / "reg"
    drawn = sorted(reg.glob("*.png"))
    assert [(p.with_suffix(".txt")).read_text() for p in drawn] == [
        "red top, blue bottom",
        "green top, yellow bottom",
        EMPTY_PROMPT,
    ]
    assert [Image.open(p).size for p in drawn] == [(96, 96), (128, 64), (96, 96)]  # each image's own bucket
    # exactly what the base model draws for that caption (before any LoRA existed)
    tok = load_tokenizer(tiny)
    manifest = json.loads((tmp_path / "run" / PRIOR_DIR / "manifest.json").read_text())
    first = manifest["images"][1]
    want = Sampler(load_model(tiny, tokenizer=tok), tok)(
        first["caption"], width=128, height=64, seed=first["seed"], **manifest["sampling"]
    )[0]
    assert np.abs(np.asarray(Image.open(drawn[1]), int) - np.asarray(want, int)).max() <= 1

    # the training set holds the three images and the three prior ones, these without the trigger
    ds = trainer.data.dataset
    assert len(ds) == 6
    trained = sorted(ds.caption(k) for k in range(6))
    assert trained.count("green top, yellow bottom") == 1 and "flat style, green top, yellow bottom" in trained
    trainer.run()

    # a resumed run reads them back rather than drawing them again
    stamps = [p.stat().st_mtime_ns for p in drawn]
    again = Trainer(tiny_train_config(tiny, data, tmp_path / "run", steps=4, resume="latest", **kw))
    assert again.step == 2 and len(again.data.dataset) == 6
    assert [p.stat().st_mtime_ns for p in drawn] == stamps


def test_drawing_reports_progress_and_a_stop_ends_the_run_at_step_0(tiny, tmp_path):
    # minutes on a full-size model: the job row shows "prior images: n of N", and a cancel does not wait for them
    captions = [f"flat style, picture {i}" for i in range(5)]
    data = dataset(tmp_path / "data", captions)
    kw = dict(prior_preservation=True, resolution=96, batch_size=1)
    seen: list[tuple] = []
    cbs = TrainCallbacks(on_prepare=lambda what, done, total: seen.append((what, done, total)))
    Trainer(tiny_train_config(tiny, data, tmp_path / "run", steps=2, **kw), cbs)
    assert seen[0] == ("prior images", 0, 5) and seen[-1] == ("prior images", 5, 5)
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)  # never backwards

    asked = []

    def stop_after_the_first_batch() -> bool:
        asked.append(1)
        return len(asked) > 1

    cbs = TrainCallbacks(should_stop=stop_after_the_first_batch, on_prepare=lambda *a: seen.append(a))
    seen.clear()
    trainer = Trainer(tiny_train_config(tiny, data, tmp_path / "stopped", steps=2, **kw), cbs)
    folder = tmp_path / "stopped" / PRIOR_DIR
    drawn = len(list((folder / "images" / "reg").glob("*.png")))
    assert 0 < drawn < 5 and seen[-1][1] == drawn  # the first sampler call's images, then it stopped
    assert not (folder / "manifest.json").exists()  # a later run draws them again rather than trusting these
    result = trainer.run()
    assert result.stopped and result.steps_done == 0


def test_no_prior_images_without_a_trigger_or_with_reg_images_of_its_own(tiny, tmp_path):
    plain = dataset(tmp_path / "plain", ["red top", "blue top"])
    with_reg = dataset(tmp_path / "with_reg", ["red top", "blue top"], reg=2)
    no_trigger = Trainer(tiny_train_config(tiny, plain, tmp_path / "a", prior_preservation=True, trigger=""))
    own_reg = Trainer(tiny_train_config(tiny, with_reg, tmp_path / "b", prior_preservation=True))
    off = Trainer(tiny_train_config(tiny, plain, tmp_path / "c"))
    assert no_trigger.prior_dir is None and own_reg.prior_dir is None and off.prior_dir is None
    assert [len(t.data.dataset) for t in (no_trigger, own_reg, off)] == [2, 4, 2]
    assert not any((tmp_path / d / PRIOR_DIR).exists() for d in "abc")


def test_a_layered_source_reads_each_file_from_its_own_source_and_refuses_a_clash(tmp_path):
    base = dataset(tmp_path / "base", ["a"])
    over = tmp_path / "over"
    (over / "reg").mkdir(parents=True)
    (over / "reg" / "x.txt").write_text("plain")
    layered = LayeredSource(FolderSource(base), FolderSource(over))
    assert sorted(e.name for e in layered.entries) == ["img0.png", "img0.txt", "reg/x.txt"]
    assert layered.read("reg/x.txt") == b"plain" and layered.read("img0.txt") == b"a"
    (over / "img0.txt").write_text("shadowing")
    with pytest.raises(SourceError, match="would replace 1 file"):
        LayeredSource(FolderSource(base), FolderSource(over))


def test_prior_images_do_not_touch_the_lora(tiny, tmp_path):
    """Drawn before the LoRA is injected: the trained adapter starts from its usual zero delta."""
    data = dataset(tmp_path / "data", ["flat style, red top"])
    trainer = Trainer(tiny_train_config(tiny, data, tmp_path / "run", prior_preservation=True))
    ups = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert ups and all(torch.count_nonzero(p) == 0 for p in ups)
