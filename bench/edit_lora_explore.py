"""Explore edit-LoRA recipes on the bundled model with core.train directly (no service): train on edit pairs of
core.synth, score base vs LoRA on held-out pairs, write a reference | base | LoRA grid (docs/evidence.md, 3).

    PYTHONPATH=. python bench/edit_lora_explore.py --out runs/edit/b4 --pairs 200 --steps 600 --rank 16 \
        --lr 2e-3 --schedule cosine --warmup 20 --guidance 3
    PYTHONPATH=. python bench/edit_lora_explore.py --out runs/edit/id1 --task identity --text "copy the image"

--task blue: "make the shape blue" pairs (core.synth.edit_pairs); identity: the target is the reference itself
(the easiest task that still needs the reference path). Scores per held-out scene: edit_score's colour_ok and
kept, whether the background is the reference's, and the mean absolute pixel error against the ideal edit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.loading import load_model, load_tokenizer
from core.lora import apply_loras, load_lora
from core.sampler import Sampler
from core.synth import render
from core.synth.edit_pairs import edit_scenes, edit_score, recoloured, write_edit_pairs
from core.train import TrainCallbacks, TrainConfig, train

MODEL = Path(__file__).resolve().parents[1] / "models" / "o1-shapes"


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--task", default="blue", choices=("blue", "identity"))
    ap.add_argument("--text", default="make the shape blue")
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--schedule", default="constant")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--extra", default="", help="comma list of extra LoRA targets (x_embedder, final_layer2)")
    ap.add_argument("--ref_dropout", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--held", type=int, default=8)
    ap.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    ap.add_argument("--eval_only", default="", help="score this LoRA file instead of training")
    return ap.parse_args(argv)


def train_lora(a, data: Path, out: Path) -> Path:
    cfg = TrainConfig(
        model_path=str(MODEL),
        data_dir=str(data),
        out_dir=str(out / "run"),
        trigger="",
        resolution=a.size,
        min_side=a.size,
        steps=a.steps,
        batch_size=a.batch,
        rank=a.rank,
        alpha=float(a.rank),
        lr=a.lr,
        lr_schedule=a.schedule,
        warmup_steps=a.warmup,
        extra_targets=tuple(x for x in a.extra.split(",") if x),
        reference_dropout=a.ref_dropout,
        gradient_checkpointing=False,
        device="cpu",
        compile=False,
        checkpoint_every=0,
        sample_every=0,
        validation_fraction=0.0,
        log_every=25,
        seed=a.seed,
    )
    losses = []
    t0 = time.time()
    result = train(
        cfg, TrainCallbacks(on_step=lambda s, total, loss, smooth, *_: losses.append((s, round(smooth, 4))))
    )
    print(f"trained {a.steps} steps in {time.time() - t0:.0f} s; smoothed loss {losses}", flush=True)
    return result.lora_file


def main(argv=None) -> None:
    a = parse(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def target_of(scene):
        return scene if a.task == "identity" else recoloured(scene, "blue")

    scenes = edit_scenes(5, a.pairs, "blue")
    write_edit_pairs(out / "pairs", scenes, "blue", a.size, target=target_of, text=a.text)
    lora_file = Path(a.eval_only) if a.eval_only else train_lora(a, out / "pairs", out)

    model, tok = load_model(MODEL, torch.float32, "cpu"), load_tokenizer(MODEL)
    lora = load_lora(model, lora_file)
    sampler = Sampler(model, tok)
    held = edit_scenes(999, a.held, "blue")
    summary = {}
    for g in a.guidance:
        rows, grid = {"base": [], "lora": []}, []
        for scene in held:
            ref, want = render(scene, a.size), np.asarray(render(target_of(scene), a.size), np.float32)
            colour = scene.shapes[0].colour if a.task == "identity" else "blue"
            grid.append([ref])
            for name in rows:
                with apply_loras(model, [(lora, 1.0)] if name == "lora" else []):
                    [img] = sampler([a.text], width=a.size, height=a.size, steps=20, guidance=g, references=[ref])
                grid[-1].append(img)
                score = edit_score(img, scene, colour)
                score["background_ok"] = score["background"] == scene.background
                score["l1"] = float(np.abs(np.asarray(img, np.float32) - want).mean())
                rows[name].append(score)
        summary[g] = {
            name: {k: float(np.mean([r[k] for r in v])) for k in ("colour_ok", "kept", "background_ok", "l1")}
            for name, v in rows.items()
        }
        print(f"guidance {g}: {json.dumps(summary[g])}", flush=True)
        s = a.size
        canvas = Image.new("RGB", (3 * s, s * len(grid)))
        for i, row in enumerate(grid):
            for j, im in enumerate(row):
                canvas.paste(im, (j * s, i * s))
        canvas.save(out / f"grid_g{g:g}.png")
    (out / "summary.json").write_text(json.dumps({"args": vars(a), "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
