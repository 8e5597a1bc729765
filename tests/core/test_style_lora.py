"""A style LoRA trained by our trainer on the bundled model learns the style, gated by its trigger phrase.

    .venv/bin/python -m pytest tests/core/test_style_lora.py -q            # small run (default suite)
    .venv/bin/python -m pytest tests/core/test_style_lora.py -q -m slow    # the longer run

core.synth writes a dataset of "hatched" scenes (black outlines, diagonal hatching: a style the bundled
model never saw) captioned with a trigger phrase; core.train trains a LoRA on the CPU; the exported
ComfyUI file is loaded back onto a fresh base model with core.lora. Then, on held-out prompts and the same
seeds, style_score (0 flat .. 1 hatched) must rise with the trigger and the LoRA on, and move much less
for prompts without the trigger. The training previews must show the adapter on | off pair.
Measured numbers and settings: docs/evidence.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.loading import load_model, load_tokenizer
from core.lora import apply_loras, load_lora
from core.sampler import Sampler
from core.synth import sample_scene, style_score
from core.synth.cli import write_dataset
from core.synth.evaluate import evaluate
from core.train import TrainConfig, train

MODEL = Path(__file__).resolve().parents[2] / "models" / "o1-shapes"
TRIGGER = "in hatched ink style"
SIZE = 128
SAMPLING = dict(width=SIZE, height=SIZE, steps=20, guidance=3.0, seed=0)  # docs/evidence.md: the CPU default
# Held-out scenes (the style set is stream 7): the evaluation prompts, and the first few as previews.
EVAL = [sample_scene(999, i, two_shape_prob=0.0) for i in range(8)]
PREVIEWS = 4


@dataclass
class StyleRun:
    result: object  # core.train.TrainResult
    scores: dict[str, np.ndarray]  # condition -> style score per held-out prompt
    follow: dict[str, dict]  # condition -> core.synth.evaluate summary (prompt following)
    base_first_preview: Image.Image  # the base model on the first preview prompt (seed 0)


def style_dataset(root: Path, hatched: int, plain: int) -> Path:
    """`hatched` styled scenes captioned with the trigger, plus `plain` ordinary scenes captioned without
    it (a regularisation set: it teaches the LoRA that no trigger means no style, which a short run on
    styled images alone does not learn -- docs/evidence.md)."""
    data = write_dataset(
        root / "data", hatched, SIZE, seed=7, style="hatched", trigger=TRIGGER, two_shape_prob=0.3
    )
    if plain:
        extra = write_dataset(root / "plain", plain, SIZE, seed=8, style="plain", two_shape_prob=0.3)
        for f in extra.iterdir():
            if f.suffix in (".png", ".txt"):
                f.rename(data / f"plain-{f.name}")
        (data / "metadata.jsonl").unlink()  # it lists the styled half only; the .txt files caption all
    return data


def train_and_score(root: Path, *, hatched: int, plain: int, steps: int, batch_size: int, lr: float) -> StyleRun:
    data = style_dataset(root, hatched, plain)
    # The captions carry the trigger themselves (only the styled half has it), so the trainer adds none.
    cfg = TrainConfig(
        model_path=str(MODEL),
        data_dir=str(data),
        out_dir=str(root / "run"),
        trigger="",
        resolution=SIZE,
        min_side=SIZE,
        steps=steps,
        batch_size=batch_size,
        rank=8,
        alpha=8.0,
        lr=lr,
        gradient_checkpointing=False,
        device="cpu",
        checkpoint_every=0,
        sample_every=steps,
        sample_prompts=tuple(s.caption(TRIGGER) for s in EVAL[:PREVIEWS]),
        sample_steps=SAMPLING["steps"],
        sample_guidance=SAMPLING["guidance"],
        sample_size=SIZE,
        seed=0,
        validation_fraction=0.0,
    )  # every image trains, as when docs/evidence.md measured
    result = train(cfg)

    # A fresh base model and the exported file: what a generation worker does with a finished LoRA.
    model, tokenizer = load_model(MODEL, torch.float32, "cpu"), load_tokenizer(MODEL)
    lora = load_lora(model, result.lora_file)
    sampler = Sampler(model, tokenizer)
    scores, follow = {}, {}
    labels = [s.labels() for s in EVAL]
    for trig in (True, False):
        prompts = [s.caption(TRIGGER if trig else "") for s in EVAL]
        name = "trigger" if trig else "plain"
        for which in ("base", "lora"):
            with apply_loras(model, [(lora, 1.0)] if which == "lora" else []):
                images = sampler(prompts, **SAMPLING)
            scores[f"{which}_{name}"] = np.array([style_score(i) for i in images])
            follow[f"{which}_{name}"] = evaluate(list(zip(images, labels)))
    # The base model's image of the first preview prompt, as the preview renders it (alone, seed 0).
    first_off = sampler([EVAL[0].caption(TRIGGER)], **SAMPLING)[0]
    return StyleRun(result, scores, follow, first_off)


def gains(run: StyleRun) -> tuple[float, float]:
    s = {k: float(v.mean()) for k, v in run.scores.items()}
    print("style scores:", {k: round(v, 3) for k, v in s.items()})
    print(
        "region / colour:",
        {k: (round(f["mean_region_acc"], 2), round(f["mean_colour_acc"], 2)) for k, f in run.follow.items()},
    )
    return s["lora_trigger"] - s["base_trigger"], s["lora_plain"] - s["base_plain"]


# ------------------------------------------------------------------------------------------ default run
STEPS = 80


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> StyleRun:
    torch.manual_seed(0)
    return train_and_score(
        tmp_path_factory.mktemp("style"), hatched=12, plain=12, steps=STEPS, batch_size=2, lr=2e-3
    )


def test_trigger_with_lora_draws_hatched(small_run):
    gain, _ = gains(small_run)
    assert small_run.scores["base_trigger"].mean() < 0.1  # the base model does not know the style
    # measured +0.21 on the bundled model repretrained 2026-12-01 (+0.31 on the one before): docs/evidence.md, 2
    assert gain >= 0.15


def test_without_trigger_the_lora_changes_much_less(small_run):
    gain, leak = gains(small_run)
    assert abs(leak) <= 0.5 * gain
    # ... and the prompts are still followed as well as by the base model (measured 1.00 / 1.00 both).
    on, off = small_run.follow["lora_plain"], small_run.follow["base_plain"]
    assert on["mean_region_acc"] >= off["mean_region_acc"] - 0.15
    assert on["mean_colour_acc"] >= off["mean_colour_acc"] - 0.15


def preview_halves(run: StyleRun) -> list[tuple[Image.Image, Image.Image]]:
    halves = []
    for path in run.result.previews:
        with Image.open(path) as im:
            pair = im.convert("RGB")
        assert pair.size == (2 * SIZE, SIZE), f"{path.name}: not two {SIZE}-px images side by side"
        halves.append((pair.crop((0, 0, SIZE, SIZE)), pair.crop((SIZE, 0, 2 * SIZE, SIZE))))
    return halves


def test_previews_show_adapter_on_and_off(small_run):
    names = [p.name for p in small_run.result.previews]
    assert names == [f"step-{STEPS:06d}-{k}.png" for k in range(PREVIEWS)]
    halves = preview_halves(small_run)
    # Every pair differs (identical halves: the adapter was not switched off), though this short run
    # changes some prompts very little: one preview differed by at most 8 levels, the others by 200+.
    diffs = [np.abs(np.asarray(on, np.float32) - np.asarray(off, np.float32)) for on, off in halves]
    assert all(d.max() > 0 for d in diffs), [float(d.max()) for d in diffs]
    assert sum(d.max() > 100 for d in diffs) >= 2
    # The right half is the base model itself (adapter disabled inside the training model) ...
    off0 = np.asarray(halves[0][1], np.float32)
    assert np.abs(off0 - np.asarray(small_run.base_first_preview, np.float32)).mean() < 1.0
    # ... and the left half carries the style.
    on_score = np.mean([style_score(on) for on, _ in halves])
    off_score = np.mean([style_score(off) for _, off in halves])
    print(f"preview style: on {on_score:.3f}, off {off_score:.3f}")
    assert on_score > off_score + 0.1


# ------------------------------------------------------------------------------------------ longer run
@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="without reg/ images the trigger alone does not gate the hatching: on the continued bundled model "
    "(2026-12-02) this run learns +0.17 of the style and leaks +0.14 without the trigger (region with it 1.00, "
    "colour 0.88); an earlier model gave +0.43 / +0.07 (docs/evidence.md, 2). Prior images gate a style "
    "(core/train/prior.py, section 5). Strict: remove this mark when it passes",
)
def test_longer_run_learns_the_style_more_and_stays_gated(tmp_path):
    # Styled images only, 4x the samples of the default run: the gating comes from the trigger alone.
    run = train_and_score(tmp_path, hatched=24, plain=0, steps=150, batch_size=4, lr=1.5e-3)
    gain, leak = gains(run)
    assert gain >= 0.3
    assert abs(leak) <= 0.3 * gain
    # The base model reads past a phrase in front of the scene since its continued pretraining with filler
    # phrases (MODEL_CARD.md; before it misplaced every shape: region 0.00); the LoRA must keep that.
    assert run.follow["base_trigger"]["mean_region_acc"] >= 0.9
    assert run.follow["lora_trigger"]["mean_region_acc"] >= 0.5
