"""The bundled model (models/o1-shapes) draws what its prompt says, on scenes it never trained on.

    .venv/bin/python -m pytest tests/core/test_bundled_model.py -q

Held-out scenes (seed streams pretraining never drew from) are generated at 128 px and read back by
core.synth.measure: the background's colour, something drawn in the stated region and nothing in the
others, the stated region's dominant colour, its shape class. A model that ignored its prompt would
score chance: background 1/5, colour 1/7, shape 1/6, one blob in the right cell 1/9. A random-weights
model of the same architecture goes through the same measurement and stays near chance, which shows
that the measure is not satisfied by any image. Measured rates and settings: docs/evidence.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.loading import load_model, load_tokenizer
from core.sampler import Sampler
from core.synth import sample_scene
from core.synth.evaluate import evaluate, size_accuracy

MODEL = Path(__file__).resolve().parents[2] / "models" / "o1-shapes"
# The settings docs/evidence.md found best on the CPU: cheap and the cleanest shapes (see there).
SAMPLING = dict(width=128, height=128, steps=20, guidance=3.0, seed=0, preset="full")
# Seed streams the pretraining never drew from (it used 128 and 256): held-out scenes.
SINGLE = [sample_scene(999, i, two_shape_prob=0.0) for i in range(48)]
DOUBLE = [sample_scene(1999, i, two_shape_prob=1.0) for i in range(16)]
CHANCE = {"background_ok": 1 / 5, "region_acc": 1 / 9, "colour_acc": 1 / 7, "shape_acc": 1 / 6}


def generate(model, tokenizer, scenes) -> list:
    return Sampler(model, tokenizer)([s.caption() for s in scenes], **SAMPLING)


def rates(images, scenes) -> dict[str, float]:
    """Means over the images; extra_regions: cells with something drawn that the caption left empty."""
    out = evaluate(list(zip(images, [s.labels() for s in scenes])))
    return {k: out[f"mean_{k}"] for k in (*CHANCE, "extra_regions")}


@pytest.fixture(scope="module")
def bundled():
    torch.manual_seed(0)
    return load_model(MODEL, torch.float32, "cpu"), load_tokenizer(MODEL)


@pytest.fixture(scope="module")
def single_images(bundled):
    return generate(*bundled, SINGLE)


def test_two_shape_captions_are_new_to_the_model():
    # Pretraining drew its text-to-image pools from streams 128 and 256 (seed + size), a fresh index range in
    # each sitting (pretrain_log.json). Single-shape captions are few (3,780) and all of them occur there, so
    # for those only the scene instance (offsets, noise seed) is new; two-shape captions are millions, so the
    # held-out ones are new sentences.
    log = json.loads((MODEL / "pretrain_log.json").read_text())
    seen = set()
    for sitting in log["sittings"]:
        start = sitting["pool_start"]
        for size, n in zip(sitting["sizes"].split(","), sitting["pool"].split(",")):
            stream = sitting["seed"] + int(size)
            seen |= {sample_scene(stream, i).caption() for i in range(start, start + int(n))}
    assert len(seen) > 100_000
    new = [s for s in DOUBLE if s.caption() not in seen]
    assert (
        len(new) >= len(DOUBLE) - 3
    )  # 13 of 16 after the small-shape sittings (14 after the continued ones, 15 before)


def test_single_shape_captions_are_followed(single_images):
    r = rates(single_images, SINGLE)
    print("single-shape rates:", {k: round(v, 3) for k, v in r.items()})
    assert r["background_ok"] >= 0.9  # chance 0.2
    assert r["region_acc"] >= 0.9  # something drawn where the caption says ...
    assert r["extra_regions"] <= 0.25  # ... and (almost) nothing where it says nothing
    assert r["colour_acc"] >= 0.75  # chance 0.14
    assert r["shape_acc"] >= 0.7  # chance 0.17; measured 0.85 (0.73 before the continued sittings)


def test_large_shapes_are_the_right_class(single_images):
    large = [(img, s) for img, s in zip(single_images, SINGLE) if s.shapes[0].size == "large"]
    assert len(large) >= 15
    r = rates([i for i, _ in large], [s for _, s in large])
    assert r["shape_acc"] >= 0.8


def test_two_shape_captions_are_followed(bundled):
    r = rates(generate(*bundled, DOUBLE), DOUBLE)
    print("two-shape rates:", {k: round(v, 3) for k, v in r.items()})
    assert r["background_ok"] >= 0.75
    assert r["region_acc"] >= 0.7
    assert r["colour_acc"] >= 0.75
    assert r["shape_acc"] >= 0.65  # measured 0.84 (0.69 before the continued sittings)
    assert r["extra_regions"] <= 0.5


def test_at_the_services_default_size_small_shapes_are_the_right_class(bundled):
    # 256 px, CFG 2: what the service gives a request on this model that names no size or CFG. After the
    # pretraining sittings aimed at small shapes every held-out shape is right here (MODEL_CARD.md: 1.00, small
    # ones too; 0.96 before them); the thresholds leave two of the 25 small shapes and one more large shape.
    images = Sampler(*bundled)(
        [s.caption() for s in SINGLE], **{**SAMPLING, "width": 256, "height": 256, "guidance": 2.0}
    )
    assert sum(s.shapes[0].size == "small" for s in SINGLE) >= 20
    out = evaluate(list(zip(images, [s.labels() for s in SINGLE])))
    print(
        "256 px rates:",
        {k: round(out[f"mean_{k}"], 3) for k in (*CHANCE, "extra_regions")},
        "small:",
        out["small_shape_acc"],
    )
    assert out["small_shape_acc"] >= 0.9
    assert out["mean_shape_acc"] >= 0.93
    assert out["mean_colour_acc"] >= 0.95 and out["mean_region_acc"] >= 0.95 and out["mean_extra_regions"] <= 0.1


def test_small_shapes_at_128px_are_mostly_the_right_class(bundled):
    # Issue 13 asked for 0.85 of small shapes right at 128 px too. 25 small shapes (the set above) are too few to
    # tell 0.80 from 0.85, so this draws 100 further held-out prompts (57 small shapes) at CFG 2 in two calls of 50,
    # as `bench/eval_bundled.py --more 100` does: 0.895 (the model before the small-shape sittings: 0.684; 200
    # prompts: 0.905 against 0.734). The threshold leaves five shapes.
    scenes = [sample_scene(999, i, two_shape_prob=0.0) for i in range(48, 148)]
    rows = []
    for k in (0, 50):
        part = scenes[k : k + 50]
        images = Sampler(*bundled)([s.caption() for s in part], **{**SAMPLING, "guidance": 2.0, "seed": 48 + k})
        rows += evaluate(list(zip(images, [s.labels() for s in part])))["rows"]
    small = size_accuracy(rows, "small")
    print(f"small shapes right at 128 px: {small:.3f}")
    assert sum(r["sizes"].count("small") for r in rows) == 57
    assert small >= 0.8


def test_random_weights_of_the_same_shape_score_near_chance(bundled):
    from core.tiny import TinySpec, build_model

    bundled_model, tokenizer = bundled
    text = bundled_model.config.text_config  # the same sizes as the bundled model, read from it
    spec = TinySpec(
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        heads=text.num_attention_heads,
        kv_heads=text.num_key_value_heads,
        head_dim=text.head_dim,
        mlp=text.intermediate_size,
        vision_hidden=64,
        vision_depth=1,
        vision_heads=2,
        vision_mlp=128,
    )
    model, _ = build_model(spec, tokenizer, seed=0)
    r = rates(generate(model, tokenizer, SINGLE[:16]), SINGLE[:16])
    print("random-weights rates:", {k: round(v, 3) for k, v in r.items()})
    assert r["colour_acc"] <= 0.35
    assert r["shape_acc"] <= 0.35
    assert r["background_ok"] <= 0.5
    # Noise fills every cell, so "something in the stated region" alone proves nothing: the empty cells
    # are what tell a drawing from noise (the bundled model leaves them empty, see above).
    assert r["extra_regions"] >= 4


def test_a_phrase_in_front_of_the_scene_is_read_past(bundled):
    # Continued pretraining put phrases that say nothing around 30% of the captions (core.synth.fillers), so a
    # LoRA trigger in front no longer moves the shapes: measured on 48 prompts region 1.00, colour 1.00, 0.02
    # empty cells filled (the model before: 0.63 / 0.52 / 1.46, MODEL_CARD.md). The phrase is a LoRA trigger the
    # fillers never use, so this is the base reading past unknown words, not past ones it learned.
    model, tokenizer = bundled
    scenes = SINGLE[:16]
    images = Sampler(model, tokenizer)([s.caption("in shaded style") for s in scenes], **SAMPLING)
    r = rates(images, scenes)
    print("with a phrase in front:", {k: round(v, 3) for k, v in r.items()})
    assert r["region_acc"] >= 0.9
    assert r["colour_acc"] >= 0.75
    assert r["extra_regions"] <= 0.25
