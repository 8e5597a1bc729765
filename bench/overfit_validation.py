"""Issue 14's evidence: on an overfitting run of the bundled model, does the validation loss turn up where
the style and prompt-following scores of generated images fall?

    python bench/overfit_validation.py --out runs/overfit     # CPU, one thread, a few minutes
    # -> runs/overfit/curves.json and docs/images/validation_overfit.png (with --plot)

Training: 4 "hatched" core.synth scenes captioned with the trigger (stream 7), a rank-8 LoRA, batch 2, a
high constant LR, many steps: a LoRA that memorises its 4 images. Validation: 8 other hatched scenes
(stream 17) with the trigger, as a separate validation folder, every --every steps (the trainer's fixed-noise
loss, 8 sigmas x 2 seeds). At each validation step the same trainer model draws 8 held-out prompts
(stream 999, with the trigger; 20 UniPC steps, CFG 3, seed 0) and core.synth scores them: style_score
(0 flat .. 1 hatched), prompt following (the share of background / region / colour / shape checks met) and
the cells of the 3x3 grid drawn in that the prompt left empty (per image).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = Path(__file__).resolve().parents[1] / "models" / "o1-shapes"
TRIGGER = "in hatched ink style"
SIZE = 128


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--plot", default="", help="write the figure here (PNG)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from core.sampler import Sampler
    from core.synth import sample_scene
    from core.synth.cli import write_dataset
    from core.synth.evaluate import evaluate
    from core.train import TrainCallbacks, TrainConfig, Trainer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    val = out / "val"
    if not data.exists():
        write_dataset(data, args.images, SIZE, seed=7, style="hatched", trigger=TRIGGER, two_shape_prob=0.3)
    if not val.exists():
        write_dataset(val, 8, SIZE, seed=17, style="hatched", trigger=TRIGGER, two_shape_prob=0.3)
    scenes = [sample_scene(999, i, two_shape_prob=0.0) for i in range(8)]
    prompts, labels = [s.caption(TRIGGER) for s in scenes], [s.labels() for s in scenes]

    rows: list[dict] = []
    train_losses: list[tuple[int, float]] = []
    holder: dict = {}
    t_score = [0.0]

    def on_step(step, total, loss, smoothed, lr, sec, eta):
        train_losses.append((step, loss))

    def on_validation(step, loss, baseline, summary):
        t0 = time.perf_counter()
        trainer = holder["trainer"]
        model = trainer.model
        was = model.training
        model.eval()
        try:
            with torch.random.fork_rng(), torch.no_grad():
                if baseline:  # the base model's scores, drawn with the adapter off as the loss was
                    from core.lora import set_adapter_enabled

                    set_adapter_enabled(model, False)
                images = Sampler(model, trainer.tokenizer)(
                    prompts, width=SIZE, height=SIZE, steps=20, guidance=3.0, seed=0
                )
                if baseline:
                    set_adapter_enabled(model, True)
        finally:
            model.train(was)
        scores = evaluate(list(zip(images, labels)))
        t_score[0] += time.perf_counter() - t0
        row = {
            "step": step,
            "baseline": baseline,
            "val_loss": loss,
            "style": scores["mean_style_score"],
            "follow": scores["mean_follow_score"],
            "region": scores["mean_region_acc"],
            "colour": scores["mean_colour_acc"],
            "shape": scores["mean_shape_acc"],
            # cells drawn in that the prompt left empty: a memorising LoRA draws its training scenes
            "extra_cells": scores["mean_extra_regions"],
        }
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        if step:
            images[0].save(out / f"sample-{step:05d}.png")

    cfg = TrainConfig(
        model_path=str(MODEL),
        data_dir=str(data),
        out_dir=str(out / "run"),
        trigger="",
        resolution=SIZE,
        min_side=SIZE,
        steps=args.steps,
        batch_size=2,
        rank=8,
        alpha=8.0,
        lr=args.lr,
        gradient_checkpointing=False,
        device="cpu",
        checkpoint_every=0,
        sample_every=0,
        seed=0,
        validation_dir=str(val),
        validation_every=args.every,
        validation_max_images=8,
        num_workers=0,
        prefetch=0,
    )
    t0 = time.perf_counter()
    trainer = Trainer(cfg, TrainCallbacks(on_step=on_step, on_validation=on_validation))
    holder["trainer"] = trainer
    result = trainer.run()
    wall = time.perf_counter() - t0
    summary = result.validation
    report = {
        "settings": {
            k: getattr(cfg, k)
            for k in (
                "steps",
                "lr",
                "batch_size",
                "rank",
                "validation_every",
                "validation_sigmas",
                "validation_seeds",
            )
        },
        "images": args.images,
        "rows": rows,
        "train_loss": train_losses,
        "validation": summary,
        "seconds": {"wall": round(wall, 1), "validation": summary["seconds"], "scoring": round(t_score[0], 1)},
    }
    (out / "curves.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["seconds"]), "best step", summary["best_step"])
    if args.plot:
        from bench.plot_curves import plot_validation

        plot_validation(report, Path(args.plot))


if __name__ == "__main__":
    main()
