"""Train a style LoRA ("outlined" or "shaded") on the bundled model with core.train, score it on held-out prompts.

    python bench/style_lora_bundled.py --out /tmp/run --steps 150 --batch 4 --lr 1e-3 --rank 16 [--style shaded]

The same data the bundled recipe uses (core.synth: styled scenes with the trigger, as many plain ones under
reg/ without it); prints the outline score and prompt following of base and LoRA, with and without the
trigger, on 16 held-out single-shape prompts (stream 999), and the training time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from core.loading import load_model, load_tokenizer
from core.lora import apply_loras, load_lora
from core.sampler import Sampler
from core.synth import sample_scene
from core.synth.cli import write_dataset
from core.synth.evaluate import evaluate
from core.synth.outline import outline_score
from core.synth.shading import shading_score
from core.train import TrainConfig, train

MODEL = Path(__file__).resolve().parents[1] / "models" / "o1-shapes"
TRIGGERS = {"outlined": "in bold outline style", "shaded": "in shaded style"}
TRIGGER = TRIGGERS["outlined"]
EVAL = [sample_scene(999, i, two_shape_prob=0.0) for i in range(16)]


def score(
    sampler, trig: bool, size: int, trigger: str = TRIGGER, at: str = "start", guidance: float = 3.0
) -> dict:
    images = sampler(
        [s.caption(trigger if trig else "", at=at) for s in EVAL],
        width=size,
        height=size,
        steps=20,
        guidance=guidance,
        seed=0,
    )
    ev = evaluate(list(zip(images, [s.labels() for s in EVAL])))
    return {
        "outline": round(sum(map(outline_score, images)) / len(images), 3),
        "shading": round(sum(map(shading_score, images)) / len(images), 3),
        **{
            k: round(ev[f"mean_{k}"], 3)
            for k in ("background_ok", "region_acc", "colour_acc", "shape_acc", "extra_regions", "speckle")
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--schedule", default="constant", help="lr schedule (the bundled preset: cosine)")
    ap.add_argument(
        "--extra", default="", help="extra LoRA targets, comma-separated: x_embedder, final_layer2 (default none)"
    )
    ap.add_argument("--style", default="outlined", choices=sorted(TRIGGERS))
    ap.add_argument("--trigger", help="instead of the style's trigger phrase")
    ap.add_argument("--reg", type=int, default=None, help="plain reg/ images (default: as many as --images)")
    ap.add_argument(
        "--trigger-at",
        default="start",
        choices=("start", "end"),
        help="end: after the scene, as `make demo` has it",
    )
    ap.add_argument("--reg-paired", action="store_true", help="reg/ images are the styled scenes drawn plain")
    ap.add_argument("--guidance", type=float, default=3.0, help="CFG of the scored images")
    ap.add_argument("--lora", help="score this trained file instead of training one")
    ap.add_argument("--skip-base", action="store_true", help="score the LoRA only")
    ap.add_argument("--seed", type=int, default=0, help="the training's seed (noise, sigmas, batch order)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other TrainConfig field (repeatable)",
    )
    a = ap.parse_args()
    out = Path(a.out)
    if a.trigger:
        TRIGGERS[a.style] = a.trigger
    if a.lora:
        return report(a, a.lora, None)
    data = write_dataset(
        out / "data", a.images, 256, seed=7, style=a.style, two_shape_prob=0.3, reg=a.images if a.reg is None else a.reg,
        trigger=TRIGGERS[a.style], trigger_at=a.trigger_at, reg_paired=a.reg_paired,
    )  # fmt: skip
    cfg = TrainConfig(
        model_path=str(MODEL),
        data_dir=str(data),
        out_dir=str(out / "run"),
        trigger=TRIGGERS[a.style],
        resolution=a.size,
        min_side=a.size,
        steps=a.steps,
        batch_size=a.batch,
        rank=a.rank,
        alpha=float(a.rank),
        lr=a.lr,
        lr_schedule=a.schedule,
        extra_targets=tuple(filter(None, a.extra.split(","))),
        gradient_checkpointing=False,
        device="cpu",
        checkpoint_every=0,
        sample_every=0,
        seed=a.seed,
    )
    for item in a.set:
        name, value = item.split("=", 1)
        kind = type(getattr(cfg, name))
        if kind is bool:
            setattr(cfg, name, value.lower() in ("1", "true", "yes", "on"))
        else:
            setattr(cfg, name, value if kind is str else kind(value))
    t0 = time.time()
    result = train(cfg)
    report(a, result.lora_file, time.time() - t0)


def report(a, lora_file, train_s) -> None:
    model, tok = load_model(MODEL, torch.float32, "cpu"), load_tokenizer(MODEL)
    sampler = Sampler(model, tok)
    rows = (
        {}
        if a.skip_base
        else {
            "base": score(sampler, False, a.size, TRIGGERS[a.style], a.trigger_at, a.guidance),
            "base+trigger": score(sampler, True, a.size, TRIGGERS[a.style], a.trigger_at, a.guidance),
        }
    )
    lora = load_lora(model, lora_file)
    with apply_loras(model, [(lora, 1.0)]):
        rows["lora+trigger"] = score(sampler, True, a.size, TRIGGERS[a.style], a.trigger_at, a.guidance)
        rows["lora"] = score(sampler, False, a.size, TRIGGERS[a.style], a.trigger_at, a.guidance)
    print(json.dumps({"args": vars(a), "train_seconds": train_s and round(train_s, 1), **rows}, indent=1))


if __name__ == "__main__":
    main()
