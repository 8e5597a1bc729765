"""What the fixed-noise validation loss costs next to training, at the defaults (issue 14: < ~5%).

    python bench/bench_validation.py            # H200: full-size random bf16 model at 1024^2, ~2 min
    python bench/bench_validation.py --tiny     # CPU smoke test (and the CPU ratio) on a tiny model

One trainer as `bench_training.py`'s "ours" (compiled layers, gradient checkpointing, bf16, rank 16) with a
validation folder of `validation_max_images` random images at the resolution: time optimizer steps, then
evaluations (the first one compiles the evaluation's batch shape and is reported apart). The cost is the
evaluation time over the training time between two evaluations (validation_every steps).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_training import CAPTION, build_model, model_spec, random_stream  # noqa: E402


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    from core.tiny import build_tokenizer
    from core.train import TrainConfig, Trainer
    from core.train.data import Prefetch, StreamData

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    res = 64 if args.tiny else 1024
    spec = model_spec(args.tiny)
    tokenizer = build_tokenizer(CAPTION.replace(",", " ").split())
    model = build_model(spec, tokenizer, device, None if args.tiny else 151936)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    defaults = TrainConfig(model_path="", out_dir="")
    with tempfile.TemporaryDirectory() as tmp:
        val = Path(tmp) / "val"
        val.mkdir()
        rng = np.random.default_rng(0)
        for i in range(defaults.validation_max_images):
            Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8)).save(val / f"v{i}.png")
            (val / f"v{i}.txt").write_text(CAPTION)
        cfg = TrainConfig(
            model_path="<random>",
            out_dir=str(Path(tmp) / "out"),
            resolution=res,
            steps=10**6,
            rank=16,
            alpha=16.0,
            device=str(device),
            precision="bf16" if device.type == "cuda" else "fp32",
            gradient_checkpointing=device.type == "cuda",
            compile=device.type == "cuda",
            checkpoint_every=0,
            sample_every=0,
            validation_dir=str(val),
            min_side=32,
        )
        trainer = Trainer(cfg, data=StreamData(random_stream(res), 1), model=model, tokenizer=tokenizer)
        batches = Prefetch(iter(trainer.data), 2)
        for _ in range(3):
            trainer.train_step(batches)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = trainer.train_step(batches)
        float(loss)
        sync(device)
        sec_step = (time.perf_counter() - t0) / args.steps
        batches.close()

        def evaluate():
            sync(device)
            t = time.perf_counter()
            point = trainer.validator.evaluate(trainer.model, trainer._inputs, bf16=trainer.bf16)
            sync(device)
            return point, time.perf_counter() - t

        first, first_s = evaluate()
        runs = [evaluate() for _ in range(2)]
        eval_s = min(s for _, s in runs)
        same = runs[0][0]["loss"] == runs[1][0]["loss"]
        between = cfg.validation_every * sec_step
        print(f"train: {sec_step:.4f} s/step at {res}^2 batch 1")
        print(
            f"validation: {trainer.validator.samples} samples ({cfg.validation_max_images} images x "
            f"{cfg.validation_seeds} seeds x {cfg.validation_sigmas} sigmas): first {first_s:.2f} s "
            f"(compiles), then {eval_s:.2f} s; loss {runs[0][0]['loss']:.6f}, repeat identical: {same}"
        )
        print(
            f"cost at validation_every={cfg.validation_every}: {eval_s:.2f} s per {between:.1f} s of training "
            f"= {100 * eval_s / between:.2f}% (+ one baseline evaluation per run)"
        )


if __name__ == "__main__":
    main()
