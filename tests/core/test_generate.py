"""python -m core.generate end to end on a tiny checkpoint in the official folder layout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core.generate import main
from core.loading import load_model, load_tokenizer
from core.sampler import Sampler
from core.tiny import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


def test_cli_end_to_end_matches_the_sampler(ckpt, tmp_path):
    out = tmp_path / "img.png"
    cmd = [
        sys.executable,
        "-m",
        "core.generate",
        "--model",
        str(ckpt),
        "--prompt",
        "a red circle",
        "--out",
        str(out),
        "--width",
        "96",
        "--height",
        "64",
        "--steps",
        "4",
        "--seed",
        "5",
    ]
    r = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(ln.endswith("s/step") for ln in lines)
    img = Image.open(out)
    assert img.size == (96, 64) and img.mode == "RGB"
    # the same request in process, from the same files
    tok = load_tokenizer(ckpt)
    want = Sampler(load_model(ckpt, tokenizer=tok), tok)("a red circle", width=96, height=64, steps=4, seed=5)[0]
    diff = np.abs(np.asarray(img, dtype=int) - np.asarray(want, dtype=int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # thread count may flip a rounding


def test_num_images_names_files_and_seeds_differ(ckpt, tmp_path):
    paths = main(
        [
            "--model",
            str(ckpt),
            "--prompt",
            "two blue squares",
            "--out",
            str(tmp_path / "x.png"),
            "--width",
            "64",
            "--height",
            "64",
            "--preset",
            "dev",
            "--num_images",
            "2",
            "--seed",
            "1",
        ]
    )
    assert [p.name for p in paths] == ["x-0.png", "x-1.png"]
    a, b = (np.asarray(Image.open(p), dtype=int) for p in paths)
    assert np.abs(a - b).mean() > 5


def _lora_file(path: Path, model) -> Path:
    """A ComfyUI-style LoRA on two linears of layer 0, random so that it visibly changes the output."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name in ("self_attn.q_proj", "mlp.down_proj"):
        lin = model.get_submodule(f"model.language_model.layers.0.{name}")
        stem = f"diffusion_model.language_model.layers.0.{name}"
        tensors[stem + ".lora_A.weight"] = torch.randn(4, lin.in_features, generator=g)
        tensors[stem + ".lora_B.weight"] = torch.randn(lin.out_features, 4, generator=g)
        tensors[stem + ".alpha"] = torch.tensor(4.0)
    save_file(tensors, str(path))
    return path


def test_lora_changes_the_image_and_scale_zero_does_not(ckpt, tmp_path):
    lora = _lora_file(tmp_path / "style.safetensors", load_model(ckpt))
    common = [
        "--model",
        str(ckpt),
        "--prompt",
        "a red circle",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "3",
        "--seed",
        "2",
    ]
    base = np.asarray(Image.open(main(common + ["--out", str(tmp_path / "base.png")])[0]), dtype=int)
    styled = np.asarray(
        Image.open(main(common + ["--out", str(tmp_path / "lora.png"), "--lora", f"{lora}:1.0"])[0]), dtype=int
    )
    off = np.asarray(
        Image.open(main(common + ["--out", str(tmp_path / "off.png"), "--lora", f"{lora}:0"])[0]), dtype=int
    )
    assert np.abs(base - styled).mean() > 1
    assert np.array_equal(base, off)


def test_reference_image_flag(ckpt, tmp_path):
    ref = tmp_path / "ref.png"
    Image.fromarray((np.random.RandomState(1).rand(40, 60, 3) * 255).astype(np.uint8)).save(ref)
    out = main(
        [
            "--model",
            str(ckpt),
            "--prompt",
            "make it blue",
            "--out",
            str(tmp_path / "e.png"),
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "2",
            "--ref",
            str(ref),
        ]
    )
    assert Image.open(out[0]).size == (64, 64)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--width", "100"], "multiples of 32"),
        (["--num_images", "0"], "--num_images must be"),
        (["--out", "x.gif"], "--out must end in"),
        (["--ref", "/nonexistent.png"], "--ref '/nonexistent.png' is not a file"),
        (["--preset", "turbo"], "invalid choice: 'turbo'"),
        (["--base_precision", "fp16"], "invalid choice: 'fp16'"),
        (["--offload_blocks", "-1"], "--offload_blocks must be >= 0"),
    ],
)
def test_bad_arguments_exit_with_a_message(ckpt, tmp_path, capsys, extra, message):
    args = [
        "--model",
        str(ckpt),
        "--prompt",
        "p",
        "--out",
        str(tmp_path / "o.png"),
        "--width",
        "64",
        "--height",
        "64",
    ] + extra
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_fp8_base_and_offload_flags(ckpt, tmp_path, capsys):
    """--base_precision fp8 loads an fp8 base, --offload_blocks streams layers; the offloaded image equals the
    resident one exactly (the same arithmetic), the fp8 one is close to the bf16 (here float32) base's."""
    common = ["--model", str(ckpt), "--prompt", "a red circle", "--width", "64", "--height", "64", "--steps", "3"]
    plain, fp8, fp8_off = (tmp_path / f"{n}.png" for n in ("plain", "fp8", "fp8_off"))
    main(common + ["--out", str(plain)])
    assert "base bf16, 0 layers offloaded" in capsys.readouterr().err  # the CPU default: nothing changes
    main(common + ["--out", str(fp8), "--base_precision", "fp8"])
    main(common + ["--out", str(fp8_off), "--base_precision", "fp8", "--offload_blocks", "1"])
    assert "base fp8, 1 layers offloaded" in capsys.readouterr().err
    a, b, c = (np.asarray(Image.open(p), dtype=int) for p in (plain, fp8, fp8_off))
    assert np.array_equal(b, c)
    assert np.abs(a - b).mean() < 8  # 0-255 levels; measured ~1 on this random tiny model


def test_missing_model_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "nope"), "--prompt", "p", "--out", str(tmp_path / "o.png")])
    assert "does not exist" in capsys.readouterr().err


def test_the_bundled_model_draws_at_its_own_size_and_cfg_unless_told(tmp_path):
    """What the service gives a request on the bundled model, the CLI gives too: 256x256, and with the full
    preset 20 steps at CFG 2 (the preset's CFG 5 overshoots this model); given flags win."""
    from core.bundled import BUNDLED_MODEL_DIR
    from core.generate import build_parser, fill_model_defaults

    def filled(*flags):
        args = build_parser().parse_args(["--prompt", "p", "--out", "o.png", *flags])
        fill_model_defaults(args)
        return args.width, args.height, args.steps, args.guidance

    assert filled("--model", str(BUNDLED_MODEL_DIR)) == (256, 256, 20, 2.0)
    assert filled("--model", str(BUNDLED_MODEL_DIR), "--width", "128", "--guidance", "3") == (128, 256, 20, 3.0)
    assert filled("--model", str(BUNDLED_MODEL_DIR), "--preset", "dev") == (256, 256, None, None)  # the preset's
    assert filled("--model", "elsewhere") == (1024, 1024, None, None)

    out = tmp_path / "shapes.png"
    main(["--model", str(BUNDLED_MODEL_DIR), "--prompt", "a small red circle in the center", "--steps", "3",
          "--seed", "2", "--out", str(out)])  # fmt: skip
    tok = load_tokenizer(BUNDLED_MODEL_DIR)
    sampler = Sampler(load_model(BUNDLED_MODEL_DIR, tokenizer=tok), tok)
    want = sampler("a small red circle in the center", width=256, height=256, steps=3, guidance=2.0, seed=2)[0]
    diff = np.abs(np.asarray(Image.open(out), dtype=int) - np.asarray(want, dtype=int))
    assert Image.open(out).size == (256, 256) and diff.max() <= 1
