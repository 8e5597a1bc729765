"""The recipe's command line end to end, and the training benchmark's CPU smoke mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def test_cli_trains_resumes_and_exports(tmp_path):
    from core.tiny import write_tiny_checkpoint
    from core.train import main

    model = write_tiny_checkpoint(tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(np.full((64, 64, 3), 60 + 90 * i, np.uint8)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a grey square number {i}")
    common = [
        "--model",
        str(model),
        "--data_dir",
        str(data),
        "--out_dir",
        str(tmp_path / "run"),
        "--resolution",
        "64",
        "--rank",
        "4",
        "--trigger",
        "grey style",
        "--checkpoint_every",
        "2",
        "--sample_every",
        "0",
        "--num_workers",
        "0",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--min_side",
        "32",
    ]
    first = main(common + ["--steps", "2"])
    assert first.steps_done == 2 and first.lora_file.is_file()
    second = main(common + ["--steps", "4", "--resume"])
    assert second.steps_done == 4
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


def test_base_precision_and_offload_flags_reach_the_config(capsys):
    from core.train import config_from_args

    base = ["--data_dir", "d", "--out_dir", "o"]
    cfg = config_from_args(base + ["--base_precision", "fp8", "--offload_blocks", "4"])
    assert (cfg.base_precision, cfg.offload_blocks) == ("fp8", 4)
    cfg.validate()
    default = config_from_args(base)
    assert (default.base_precision, default.offload_blocks) == ("auto", 0)  # auto: bf16 on a CPU
    with pytest.raises(SystemExit):
        config_from_args(base + ["--base_precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(base_precision="fp16"), "base_precision must be 'auto', 'bf16' or 'fp8', got 'fp16'"),
        (dict(full=True, base_precision="fp8"), "base_precision 'fp8' freezes the base"),
        (dict(offload_blocks=-1), "offload_blocks must be an integer >= 0"),
        (dict(offload_blocks=2, gradient_checkpointing=False), "offload_blocks needs gradient checkpointing"),
        (dict(offload_blocks=2, full=True), "offload_blocks streams frozen weights"),
    ],
)
def test_the_config_names_what_cannot_work(kw, message):
    from core.train import TrainConfig

    with pytest.raises(ValueError, match=message):
        TrainConfig(model_path="m", out_dir="o", data_dir="d", **kw).validate()


def test_bench_tiny_smoke():
    out = subprocess.run(
        [
            sys.executable,
            "bench/bench_training.py",
            "--tiny",
            "--variants",
            "recipe,ours",
            "--steps",
            "1",
            "--warmup",
            "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout.strip().splitlines()
    assert table[-4].startswith("| variant |")
    assert table[-2].startswith("| recipe | 64 | 1 | on |") and "1.00x" in table[-2]
    assert table[-1].startswith("| ours | 64 | 1 | on |") and "failed" not in table[-1]


def test_the_bundled_model_trains_with_its_preset_unless_flags_say_otherwise():
    """`python -m core.train` on the bundled model (its default --model) gets the service's "bundled" recipe, not
    the 8B recipe's 1024 px and 2,500 steps at 1e-4; a flag given wins, and alpha follows a rank given."""
    from core.bundled import BUNDLED_MODEL_DIR
    from core.train import TrainConfig, config_from_args
    from core.train.presets import TRAINING_PRESETS

    base = ["--data_dir", "d", "--out_dir", "o"]
    want = TRAINING_PRESETS["bundled"].values
    cfg = config_from_args(base)
    assert cfg.model_path == str(BUNDLED_MODEL_DIR)
    got = (cfg.resolution, cfg.steps, cfg.lr, cfg.batch_size, cfg.rank, cfg.alpha, cfg.lr_schedule)
    assert got == tuple(
        want[k] for k in ("resolution", "steps", "learning_rate", "batch_size", "rank", "alpha", "lr_schedule")
    )
    cfg.validate()
    mine = config_from_args(base + ["--steps", "40", "--rank", "8"])
    assert (mine.steps, mine.rank, mine.alpha, mine.lr) == (40, 8, 8.0, want["learning_rate"])
    spelled = config_from_args(base + ["--model", str(BUNDLED_MODEL_DIR / ".." / BUNDLED_MODEL_DIR.name)])
    assert spelled.resolution == want["resolution"]

    recipe = TrainConfig(model_path="x", out_dir="o")
    other = config_from_args(base + ["--model", "elsewhere/HiDream-O1-Image"])
    assert (other.resolution, other.steps, other.lr) == (recipe.resolution, recipe.steps, recipe.lr)
    plain = config_from_args(base + ["--preset", "none"])
    assert (plain.resolution, plain.steps) == (recipe.resolution, recipe.steps)
    quick = config_from_args(base + ["--model", "elsewhere", "--preset", "quick"])
    assert (quick.steps, quick.lr) == (
        TRAINING_PRESETS["quick"].values["steps"],
        TRAINING_PRESETS["quick"].values["learning_rate"],
    )


def test_help_lists_every_flag(capsys):
    """`python -m core.train --help` prints (a field comment with a % sign once made argparse raise instead)."""
    from core.train import config_from_args

    with pytest.raises(SystemExit) as done:
        config_from_args(["--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "--validation_fraction" in out and "10% from 20 images up" in out
    # a field comment carried on to a second line is all in its flag's help
    assert "draws each caption without the trigger first, and those images train as reg/ images" in out
