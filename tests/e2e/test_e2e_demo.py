"""`make demo`: the whole HTTP flow (embedded service on the bundled model, its default preset, a shaded-style
dataset of styled images, whose reg/ images the bundled preset draws with the base model, training, generations
base / LoRA with and without the trigger) and issue 13's targets
for that first LoRA, measured by core.synth on held-out prompts."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ops import demo


@pytest.mark.slow
def test_demo_smoke_run_writes_the_labelled_grid_and_the_scores(tmp_path):
    args = ["--steps", "2", "--images", "4", "--gen-steps", "2", "--prompts", "3", "--show", "2"]
    assert demo.main([*args, "--out", str(tmp_path)]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["training"]["params"]["preset"] == "bundled"  # the service's default on the bundled model
    assert scores["prompts"] == 3 and list(scores["scores"]) == list(demo.COLUMNS)
    grid = Image.open(tmp_path / "grid.png")
    side = 256  # the preset's 256 px, shown as they are (128 px images would be shown at twice their size)
    assert grid.width >= 4 * (side + 8) + 8  # 4 columns
    assert (
        grid.height > 14 + 8 + 2 * (side + 14 + 8) + 4 * 14
    )  # 2 rows, then the score lines (title + 4 + targets)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_first_lora_learns_the_style_gated_by_its_trigger_without_breaking_the_prompt(tmp_path):
    """Issue 13, part 3: the demo's defaults, through the service, on 16 held-out prompts (same seeds). Measured
    2026-12-02 on 2 AMD EPYC cores, on the bundled model after its small-shape sittings: +0.67 with the trigger,
    +0.02 without, following 1.00, 225 s of training (the bundled preset's 300 steps with prior images;
    docs/evidence.md section 5). Seed to seed (core.train): +0.67 / +0.02 and +0.71 / +0.02."""
    result = demo.run(demo.parser().parse_args(["--out", str(tmp_path)]))
    print(json.dumps({k: result[k] for k in ("scores", "targets")}, indent=1), result["training"]["seconds"])
    assert result["training"]["params"]["preset"] == "bundled"
    assert result["training"]["seconds"] <= 300  # on this machine's 2 cores (docs/evidence.md section 5)
    for name, target in result["targets"].items():
        assert target["met"], (name, target, result["scores"])
