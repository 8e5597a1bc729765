"""The validation loss (issue 14) on a tiny model on the CPU: fixed noise repeats bit for bit, held-out images
never train, resume keeps the history, and the published LoRA and early stop follow the recorded losses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from train_helpers import tiny_train_config

from core.data.holdout import AUTO_MIN_IMAGES, held_out_names
from core.train import TrainCallbacks, TrainConfig, Trainer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from core.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def six_images(tmp_path_factory) -> Path:
    """Six 64x64 two-colour images, each with a caption naming it (so a batch tells which images it holds)."""
    d = tmp_path_factory.mktemp("data")
    for i in range(6):
        a = np.zeros((64, 64, 3), np.uint8)
        a[:32], a[32:] = (40 * i, 200, 30), (30, 30, 40 * i)
        Image.fromarray(a).save(d / f"img{i}.png")
        (d / f"img{i}.txt").write_text(f"image number {i}")
    return d


def config(tiny, data, out, **kw) -> TrainConfig:
    validation = dict(validation_fraction=0.34, validation_every=2, validation_sigmas=4, validation_seeds=2)
    return tiny_train_config(tiny, data, out, **{"trigger": "t", **validation, **kw})


def evaluate(trainer: Trainer) -> dict:
    return trainer.validator.evaluate(trainer.model, trainer._inputs, bf16=False)


def test_fixed_noise_evaluation_is_bit_for_bit_repeatable(tiny, six_images, tmp_path):
    trainer = Trainer(config(tiny, six_images, tmp_path / "run", lora_dropout=0.5))
    first, second = evaluate(trainer), evaluate(trainer)
    assert first["loss"] == second["loss"] and first["by_sigma"] == second["by_sigma"]  # exact, not approx
    assert first["samples"] == 2 * 2 * 4  # 2 held-out images x 2 seeds x 4 sigmas
    assert trainer.model.training  # evaluation left the model in train mode
    # training draws from its own generator; the evaluation neither uses nor moves it
    state = trainer.generator.get_state()
    evaluate(trainer)
    assert torch.equal(state, trainer.generator.get_state())
    batches = iter(trainer.data)
    trainer.train_step(batches)
    moved = evaluate(trainer)
    assert moved["loss"] != first["loss"]  # a changed LoRA changes the number
    assert evaluate(trainer)["loss"] == moved["loss"]


def test_smaller_validation_calls_give_the_same_loss(tiny, six_images, tmp_path):
    # a GPU run caps a call at twice the training batch's rows (the peak, bench/RESULTS.md): one sigma per call
    # must measure what all sigmas in one call measure
    trainer = Trainer(config(tiny, six_images, tmp_path / "run"))
    whole = evaluate(trainer)
    trainer.validator.tokens_per_call = 1  # one row per call
    one_by_one = evaluate(trainer)
    assert one_by_one["samples"] == whole["samples"]
    assert one_by_one["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert one_by_one["by_sigma"] == pytest.approx(whole["by_sigma"], rel=1e-5)


def test_held_out_images_never_reach_the_training_batches(tiny, six_images, tmp_path):
    trainer = Trainer(config(tiny, six_images, tmp_path / "run", repeats=3, flip=True, caption_dropout=0.0))
    held = set(trainer.validator.names)
    trained = {r.name for r in trainer.data.dataset.records}
    assert len(held) == 2 and trained.isdisjoint(held) and len(trained | held) == 6
    held_captions = {f"t, image number {name[3]}" for name in held}
    assert {item.caption for item in trainer.validator.items} == held_captions  # trigger, no dropout
    seen = set()
    batches = iter(trainer.data)
    for _ in range(4 * 3 * 3):  # several epochs of 4 images x 3 repeats
        _, captions = next(batches)
        seen.update(captions)
    assert seen and seen.isdisjoint(held_captions), seen & held_captions
    assert len(seen) == 4


def test_the_held_out_choice_auto_rule_and_bounds():
    small = [f"{i}.png" for i in range(AUTO_MIN_IMAGES - 1)]
    large = [f"{i}.png" for i in range(190)]
    assert held_out_names(small, None, 4) == set()  # auto: a tiny dataset keeps every image
    assert len(held_out_names(large, None, 4)) == 4  # auto: 10%, capped
    assert len(held_out_names(large, None, 100)) == 19
    assert held_out_names(large, 0.0, 4) == set()
    assert held_out_names(large, None, 4) == held_out_names(list(reversed(large)), None, 4)  # names, not order
    with pytest.raises(ValueError, match="leaves none to train"):
        held_out_names(["a.png"], 0.5, 4)


def test_a_separate_validation_folder_holds_nothing_out(tiny, six_images, tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    Image.fromarray(np.full((64, 96, 3), 90, np.uint8)).save(val / "wide.png")
    (val / "wide.txt").write_text("a grey wide image")
    trainer = Trainer(config(tiny, six_images, tmp_path / "run", validation_dir=str(val)))
    assert len(trainer.data.dataset.records) == 6 and trainer.validator.names == ["wide.png"]
    item = trainer.validator.items[0]
    from core.data import make_buckets, nearest_bucket

    assert (item.width, item.height) == nearest_bucket(96, 64, make_buckets(64))  # training's bucket rule
    assert item.caption == "t, a grey wide image"


def test_resume_keeps_the_validation_history(tiny, six_images, tmp_path):
    kw = dict(steps=6, checkpoint_every=2)
    full = Trainer(config(tiny, six_images, tmp_path / "a", **kw)).run()

    calls: list[tuple] = []
    seen = {"step": 0}
    cb = TrainCallbacks(
        on_step=lambda step, *a: seen.update(step=step),
        should_stop=lambda: seen["step"] >= 4,
        on_validation=lambda step, loss, baseline, summary: calls.append((step, baseline)),
    )
    first = Trainer(config(tiny, six_images, tmp_path / "b", **kw), cb).run()
    assert first.stopped and [p["step"] for p in first.validation["series"]] == [2, 4]
    again: list[tuple] = []
    second = Trainer(
        config(tiny, six_images, tmp_path / "b", resume="latest", **kw),
        TrainCallbacks(on_validation=lambda step, loss, baseline, s: again.append((step, baseline))),
    )
    assert [p["step"] for p in second.history.points] == [2, 4] and second.history.baseline is not None
    result = second.run()
    assert calls == [(0, True), (2, False), (4, False)]
    assert again == [(6, False)]  # the baseline is not measured again
    assert [p["step"] for p in result.validation["series"]] == [2, 4, 6]
    assert result.validation["baseline"] == full.validation["baseline"]
    for a, b in zip(full.validation["series"], result.validation["series"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)  # as the resumed weights match (test_train)


def test_best_checkpoint_and_early_stop_follow_the_recorded_losses(tiny, six_images, tmp_path):
    # lr 0.3 makes the held-out loss bounce: measured, it first fails to improve at step 5 (best step 4)
    cfg = config(
        tiny,
        six_images,
        tmp_path / "run",
        steps=12,
        lr=0.3,
        validation_every=1,
        validation_seeds=1,
        checkpoint_every=1,
        keep_checkpoints=0,
        publish="best",
        early_stop_patience=1,
    )
    result = Trainer(cfg).run()
    series = result.validation["series"]
    losses = [p["loss"] for p in series]
    # the rule, recomputed from the recorded numbers: stop at the first evaluation not below the best so far
    first_bad = next(i for i in range(1, len(losses)) if losses[i] >= min(losses[:i]))
    best_i = losses.index(min(losses))
    assert result.early_stopped and not result.stopped
    assert result.steps_done == series[first_bad]["step"] < 12 and len(series) == first_bad + 1
    assert result.validation["best_step"] == series[best_i]["step"] == result.published_step
    assert result.validation["best_step"] != result.steps_done

    ckpts = Path(cfg.out_dir) / "checkpoints"
    best_w = load_file(str(ckpts / f"step-{result.published_step:06d}" / "weights.safetensors"))
    last_w = load_file(str(ckpts / f"step-{result.steps_done:06d}" / "weights.safetensors"))
    published = load_file(str(result.lora_dir / "adapter_model.safetensors"))
    which, step, other_dir, other_file = result.other_lora
    kept = load_file(str(other_dir / "adapter_model.safetensors"))
    assert (which, step) == ("last", result.steps_done) and other_file.name == "lora-last.safetensors"
    for k, v in best_w.items():
        assert torch.equal(published["base_model.model." + k], v)
        assert torch.equal(kept["base_model.model." + k], last_w[k])
    with safe_open(str(result.lora_file), "pt") as f:
        meta = f.metadata()
    assert meta["o1lora.checkpoint"] == "best" and meta["o1lora.steps"] == str(result.published_step)
    assert float(meta["o1lora.validation_loss"]) == min(losses)
    assert [p["loss"] for p in json.loads(meta["o1lora.validation"])["series"]] == losses
    with safe_open(str(ckpts / f"step-{result.steps_done:06d}" / "weights.safetensors"), "pt") as f:
        assert float(f.metadata()["o1lora.validation_loss"]) == losses[-1]
