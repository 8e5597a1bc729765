"""Does the service's fast path draw what the eager sampler draws? The bundled model on a GPU (issues 8 and 15).

    python bench/fast_vs_eager_bundled.py --out $OUT          # one H200, ~1 min after the compiles
    python bench/fast_vs_eager_bundled.py --device cpu --n 4  # CPU dry run (no fast variants)

On random full-size weights any rounding difference grows through 36 layers into another image (PSNR ~10 dB
between two paths that both compute correctly), so "equal within bf16 noise" is measured here on a model that
has learned to draw: models/o1-shapes, at the service's settings for it (256 px, 20 steps, CFG 2), 48 single-
shape and 16 two-shape held-out prompts (bench/eval_bundled.py's), one batch per variant, the same seed.

Variants (the reference first):
  fp32-eager   float32 weights and compute, TF32 off: what the CPU runs, and the reference
  bf16-eager   bf16 weights, eager layers: the GPU's eager path ("bf16 noise" is this row's distance)
  bf16-fast    the worker's fast path on a bf16 base: compiled decoder layers, the step replayed as a CUDA graph
  fp8-eager    the fp8 base (e4m3 linears, scaled fp8 matmuls), eager
  fp8-fast     the worker's default on an H200: fp8 base, compiled layers, CUDA graph
Each gets PSNR and mean absolute difference (0-255 levels) against fp32-eager, and core.synth's scores
(prompt following, shape class, small shapes, speckle, style), so a difference is also read as what it does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.loading import load_model, load_tokenizer  # noqa: E402
from core.sampler import Sampler  # noqa: E402
from core.synth import sample_scene  # noqa: E402
from core.synth.evaluate import evaluate  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "models" / "o1-shapes"
VARIANTS = {
    "fp32-eager": dict(dtype=torch.float32, base_precision="bf16", fast=False),
    "bf16-eager": dict(dtype=torch.bfloat16, base_precision="bf16", fast=False),
    "bf16-fast": dict(dtype=torch.bfloat16, base_precision="bf16", fast=True),
    "fp8-eager": dict(dtype=torch.bfloat16, base_precision="fp8", fast=False),
    "fp8-fast": dict(dtype=torch.bfloat16, base_precision="fp8", fast=True),
}
KEYS = ("mean_follow_score", "mean_shape_acc", "small_shape_acc", "mean_speckle", "mean_style_score")


def psnr_and_mad(a: list, b: list) -> tuple[float, float]:
    x = np.stack([np.asarray(i, dtype=np.float64) for i in a])
    y = np.stack([np.asarray(i, dtype=np.float64) for i in b])
    mse = float(((x - y) ** 2).mean())
    return (math.inf if mse == 0 else 10 * math.log10(255**2 / mse)), float(np.abs(x - y).mean())


def draw(name: str, device, tok, prompts: list[str], size: int, steps: int, guidance: float):
    v = VARIANTS[name]
    model = load_model(
        MODEL, v["dtype"], device, tokenizer=tok, base_precision=v["base_precision"], fp8_matmul="scaled"
    )
    sampler = Sampler(
        model,
        tok,
        preview_every=0,
        compile="inductor" if v["fast"] else False,
        compile_scope="layers",
        cuda_graph=v["fast"],
    )
    kw = dict(width=size, height=size, steps=steps, guidance=guidance, seed=0, preset="full")
    t = time.perf_counter()
    images = sampler(prompts, **kw)
    if v["fast"]:  # the first call compiled and captured; the service's later requests replay: time one
        t = time.perf_counter()
        images = sampler(prompts, **kw)
    return images, time.perf_counter() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--n", type=int, default=48, help="single-shape prompts (two-shape: n / 3)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tok = load_tokenizer(MODEL)
    scenes = [sample_scene(999, i, two_shape_prob=0.0) for i in range(a.n)]
    scenes += [sample_scene(1999, i, two_shape_prob=1.0) for i in range(max(1, a.n // 3))]
    prompts = [s.caption() for s in scenes]
    names = [n for n in a.variants.split(",") if device.type == "cuda" or not VARIANTS[n]["fast"]]
    rows, ref = [], None
    for name in names:
        images, seconds = draw(name, device, tok, prompts, a.size, a.steps, a.guidance)
        if ref is None:
            ref = images
        psnr, mad = psnr_and_mad(images, ref)
        scores = evaluate(list(zip(images, [s.labels() for s in scenes])))
        row = dict(
            variant=name,
            psnr_db=round(psnr, 1),
            mean_abs_diff=round(mad, 3),
            seconds=round(seconds, 2),
            **{k: round(scores[k], 3) for k in KEYS},
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.out:
            Path(a.out).mkdir(parents=True, exist_ok=True)
            strip = np.concatenate([np.asarray(i) for i in images[:8]], axis=1)
            from PIL import Image

            Image.fromarray(strip).save(Path(a.out) / f"fast_vs_eager_{name}.png")
    if a.out:
        (Path(a.out) / "fast_vs_eager_bundled.json").write_text(json.dumps(rows, indent=1))
    print("\n| variant | PSNR vs fp32 eager, dB | mean abs diff | follow | shape | small | speckle | style | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['psnr_db']} | {r['mean_abs_diff']} | {r['mean_follow_score']} | "
            f"{r['mean_shape_acc']} | {r['small_shape_acc']} | {r['mean_speckle']} | {r['mean_style_score']} | "
            f"{r['seconds']} |"
        )


if __name__ == "__main__":
    main()
