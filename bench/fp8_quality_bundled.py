"""What an fp8 base costs in quality, measured on the bundled model on the CPU (issue 15).

    python bench/fp8_quality_bundled.py --parts xpred,scores,lora --out /tmp/fp8q      # ~30 min on 2 cores

Bases compared (models/o1-shapes, the same weights; core/fp8.py):
  fp32         the reference: the checkpoint's bf16 weights computed in float32 (what the CPU default runs)
  bf16         weights and compute in bf16 (what a GPU ran before issue 15)
  fp8-w        fp8 weight-only: e4m3 weights per output channel, dequantised to bf16 before each matmul
               (what a GPU without fp8 matmuls runs)
  fp8          fp8 weights and per-token fp8 activations through torch._scaled_mm, float32 accumulation,
               bf16 out: the arithmetic the H200 runs (the CPU build of torch has a _scaled_mm too)

Parts:
  xpred   x_pred relative error against fp32, ||x - x_fp32|| / ||x_fp32||, over the 48 single-shape eval scenes
          (stream 999) at 128 px, rendered and noised at sigma 0.9 / 0.5 / 0.1 (fixed noise)
  xpred-parts  the fp8 x_pred error (as a multiple of bf16's) with one kind of linear at a time weight-only
  scores  bench/eval_bundled.py's prompt-following measures and the mean style score, 48 single-shape and 16
          two-shape prompts, 20 steps, CFG 3, seed 0: the same seeds for every base
  lora    a hatched-style LoRA (tests/core/test_style_lora.py's small run: 12 + 12 images, 80 steps) trained on
          the fp32 base and on an fp8 base (weight-only, float32 compute: the CPU trainer), each scored with its
          trigger on the bf16 and the fp8 base (style score on 8 held-out prompts): does a LoRA move across?
  merge   that LoRA (trained on fp32) applied beside the linears (hooks: the slots' arithmetic) and merged into the
          weights (core.lora.merge; an fp8 base re-quantised with the LoRA in it, from its full-precision linears,
          and "merged-fp8" from its fp8 values), on the bf16 and fp8 bases:
          style score with the trigger on the 8 held-out prompts, and the images' difference merged vs hooks
The JSON of each part is printed and written to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.layout import build_t2i, collate, patchify  # noqa: E402
from core.loading import load_model, load_tokenizer  # noqa: E402
from core.sampler import Sampler  # noqa: E402
from core.synth import render, sample_scene, style_score  # noqa: E402
from core.synth.evaluate import evaluate  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "models" / "o1-shapes"
BASES = {
    "fp32": dict(dtype=torch.float32),
    "bf16": dict(dtype=torch.bfloat16),
    "fp8-w": dict(dtype=torch.bfloat16, base_precision="fp8", fp8_matmul="weight_only"),
    "fp8": dict(dtype=torch.bfloat16, base_precision="fp8", fp8_matmul="scaled"),
}
SAMPLING = dict(width=128, height=128, steps=20, guidance=3.0, seed=0, preset="full")


def load(name: str, tok):
    return load_model(MODEL, device="cpu", tokenizer=tok, **BASES[name])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@torch.no_grad()
def xpred_errors(tok, names) -> dict:
    scenes = [sample_scene(999, i, two_shape_prob=0.0) for i in range(48)]
    batch = collate([build_t2i(tok, s.caption(), 128, 128) for s in scenes])
    x0 = torch.cat([patchify(_image(render(s, 128))) for s in scenes])
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(x0.shape, generator=g)
    out, ref = {}, {}
    for name in names:
        model = load(name, tok)
        dtype = BASES[name]["dtype"]
        errs = {}
        for sigma in (0.9, 0.5, 0.1):
            z = (1 - sigma) * x0 + sigma * eps
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                x = model(**batch.model_inputs(z.to(dtype), 1 - sigma)).x_pred[:, -x0.shape[1] :].float()
            if name == "fp32":
                ref[sigma] = x
            errs[str(sigma)] = round(rel(x, ref[sigma]), 5)
        errs["mean"] = round(sum(errs.values()) / 3, 5)
        out[name] = errs
        print(name, errs, flush=True)
    return out


@torch.no_grad()
def xpred_parts(tok) -> dict:
    """Which linears' fp8 activations cost the most: the fp8 base's x_pred error against float32 (sigma 0.5, 24
    single-shape scenes) with one kind of linear at a time multiplying weight-only (its input not quantised),
    then all of them; as multiples of bf16's error."""
    from core.fp8 import fp8_linears

    scenes = [sample_scene(999, i, two_shape_prob=0.0) for i in range(24)]
    batch = collate([build_t2i(tok, s.caption(), 128, 128) for s in scenes])
    x0 = torch.cat([patchify(_image(render(s, 128))) for s in scenes])
    z = 0.5 * x0 + 0.5 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))

    def x_pred(model, dtype):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            return model(**batch.model_inputs(z.to(dtype), 0.5)).x_pred[:, -x0.shape[1] :].float()

    ref = x_pred(load("fp32", tok), torch.float32)
    bf16 = rel(x_pred(load("bf16", tok), torch.bfloat16), ref)
    model = load("fp8", tok)
    linears = fp8_linears(model)
    out = {"all scaled": round(rel(x_pred(model, torch.bfloat16), ref) / bf16, 2)}
    for kind in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", ""):
        for path, lin in linears.items():
            lin.scaled_mm = not path.endswith(kind)  # "": every linear weight-only
        out[f"{kind or 'all'} weight-only"] = round(rel(x_pred(model, torch.bfloat16), ref) / bf16, 2)
        print(kind, out, flush=True)
    return out


def _image(img) -> torch.Tensor:
    import numpy as np

    a = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
    return a.permute(2, 0, 1)[None]


def scores(tok, names) -> dict:
    single = [sample_scene(999, i, two_shape_prob=0.0) for i in range(48)]
    double = [sample_scene(1999, i, two_shape_prob=1.0) for i in range(16)]
    out = {}
    for name in names:
        sampler = Sampler(load(name, tok), tok, preview_every=0)
        t0 = time.time()
        row = {}
        for label, scenes in (("single", single), ("double", double)):
            images = sampler([s.caption() for s in scenes], **SAMPLING)
            ev = evaluate(list(zip(images, [s.labels() for s in scenes])))
            ev.pop("rows")
            row[label] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in ev.items()}
        row["seconds"] = round(time.time() - t0, 1)
        out[name] = row
        print(name, json.dumps(row), flush=True)
    return out


def lora_both_ways(tok, out_dir: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))
    from test_style_lora import EVAL, TRIGGER, style_dataset

    from core.lora import apply_loras, load_lora

    data = style_dataset(out_dir / "style", hatched=12, plain=12)
    files = {}
    for trained_on in ("fp32", "fp8"):
        t0 = time.time()
        files[trained_on] = _train_style_lora(
            data, out_dir / f"run-{trained_on}", "bf16" if trained_on == "fp32" else "fp8"
        )
        print(f"trained on {trained_on}: {time.time() - t0:.0f} s", flush=True)
    prompts = [s.caption(TRIGGER) for s in EVAL]
    out = {}
    for base in ("bf16", "fp8"):
        model = load(base, tok)
        sampler = Sampler(model, tok, preview_every=0)
        no_lora = sampler(prompts, **SAMPLING)
        out[f"{base} base, no LoRA"] = round(sum(map(style_score, no_lora)) / len(no_lora), 4)
        for trained_on, file in files.items():
            with apply_loras(model, [(load_lora(model, file), 1.0)]):
                images = sampler(prompts, **SAMPLING)
            out[f"{base} base, LoRA trained on {trained_on}"] = round(
                sum(map(style_score, images)) / len(images), 4
            )
        print(base, out, flush=True)
    return out


def _train_style_lora(data: Path, run_dir: Path, base_precision: str) -> Path:
    """tests/core/test_style_lora.py's small hatched run (80 steps of 2, rank 8) on `data`; the LoRA file."""
    from core.train import TrainConfig, train

    torch.manual_seed(0)
    cfg = TrainConfig(
        model_path=str(MODEL),
        data_dir=str(data),
        out_dir=str(run_dir),
        trigger="",
        resolution=128,
        min_side=128,
        steps=80,
        batch_size=2,
        rank=8,
        alpha=8.0,
        lr=2e-3,
        gradient_checkpointing=False,
        device="cpu",
        checkpoint_every=0,
        sample_every=0,
        seed=0,
        validation_fraction=0.0,
        base_precision=base_precision,
    )
    return train(cfg).lora_file


def merged_vs_hooks(tok, out_dir: Path, bases=("bf16", "fp8")) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))
    import numpy as np
    from test_style_lora import EVAL, TRIGGER, style_dataset

    from core.loading import read_weights
    from core.lora import full_weight_names, install_lora_merging, load_lora, set_loras

    file = _train_style_lora(style_dataset(out_dir / "style", hatched=12, plain=12), out_dir / "run-bf16", "bf16")
    prompts = [s.caption(TRIGGER) for s in EVAL]
    out = {}
    for base in bases:
        images = {}
        # an fp8 base merges from its full-precision linears (the worker's way), or, "merged-fp8", from its fp8 values
        for how in ("none", "hooks", "merged") + (("merged-fp8",) if base == "fp8" else ()):
            model = load(base, tok)
            if how == "merged":
                full = read_weights(MODEL, full_weight_names(model), BASES[base]["dtype"])
                install_lora_merging(model, full_weights=full)
            if how == "merged-fp8":
                install_lora_merging(model)
            if how != "none":
                set_loras(model, [(load_lora(model, file), 1.0)])
            with torch.no_grad():
                images[how] = Sampler(model, tok, preview_every=0)(prompts, **SAMPLING)
            out[f"{base} base, {how}: style"] = round(sum(map(style_score, images[how])) / len(prompts), 4)
        arr = {k: np.stack([np.asarray(i, dtype=np.float64) for i in v]) for k, v in images.items()}
        for how in [h for h in arr if h.startswith("merged")]:
            out[f"{base} base: mean |{how} - hooks| (0-255)"] = round(
                float(np.abs(arr[how] - arr["hooks"]).mean()), 3
            )
        out[f"{base} base: mean |hooks - none| (0-255)"] = round(
            float(np.abs(arr["hooks"] - arr["none"]).mean()), 3
        )
        print(base, out, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="xpred,scores,lora")
    ap.add_argument("--bases", default=",".join(BASES))
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(MODEL)
    names = a.bases.split(",")
    parts = a.parts.split(",")
    result = {}
    if "xpred" in parts:
        result["xpred_rel_error_vs_fp32"] = xpred_errors(tok, ["fp32", *[n for n in names if n != "fp32"]])
    if "xpred-parts" in parts:
        result["xpred_vs_bf16_by_linear"] = xpred_parts(tok)
    if "scores" in parts:
        result["scores"] = scores(tok, names)
    if "lora" in parts:
        result["lora_style_score"] = lora_both_ways(tok, out)
    if "merge" in parts:
        result["merged_vs_hooks"] = merged_vs_hooks(tok, out, [b for b in ("bf16", "fp8") if b in names])
    (out / "fp8_quality.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
