"""LoRA training speed with reference images (edit / personalisation samples) at full HiDream-O1 size.

    python bench/bench_train_refs.py               # H200: full-size random bf16 model, 0 / 1 / 3 references
    python bench/bench_train_refs.py --tiny        # CPU smoke test of the same code path (seconds)

Same model and trainer as bench/bench_training.py (random bf16 weights built on the GPU, LoRA rank 16 on the
252 language-model linears, bf16 autocast); each step is one optimizer step on a 1024^2 target with a prose
caption and K references (random 1024^2 images: the official resizing makes them 1024^2 raw patches for
K = 1, 512^2 each for K = 3, and 384^2 vision-tower copies), laid out as core.train.references lays them out
(the vision tower frozen, run without autograd each step). `--compile` compiles the decoder layers (each
new sequence length then compiles again in the warm-up).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_training import CAPTION, build_model, model_spec  # noqa: E402


class RefStream:
    """Endless (images [1, 3, R, R], [caption], [[K reference images]]) batches, seeded per item."""

    def __init__(self, resolution: int, k: int):
        self.resolution, self.k, self.i = resolution, k, 0

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.i)
            self.i += 1
            img = torch.rand(1, 3, self.resolution, self.resolution, generator=g) * 2 - 1
            refs = [
                Image.fromarray(
                    (torch.rand(self.resolution, self.resolution, 3, generator=g) * 255).to(torch.uint8).numpy()
                )
                for _ in range(self.k)
            ]
            yield (img, [CAPTION], [refs]) if self.k else (img, [CAPTION])

    def state_after(self, n):
        return {}

    def load_state_dict(self, state):
        pass


def measure(
    spec, vocab, tokenizer, device, k: int, resolution: int, steps: int, warmup: int, compile: bool
) -> dict:
    """One fresh model per measurement (the LoRA is injected into it), freed afterwards."""
    import gc

    from core.train.trainer import TrainConfig, Trainer

    model = build_model(spec, tokenizer, device, vocab)
    if device.type != "cuda":
        model = model.float()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            model_path="<random>",
            out_dir=tmp,
            resolution=resolution,
            steps=10**6,
            rank=16,
            alpha=16.0,
            device=str(device),
            precision="bf16" if device.type == "cuda" else "fp32",
            gradient_checkpointing="auto",
            compile=compile,
            checkpoint_every=0,
            sample_every=0,
        )
        trainer = Trainer(cfg, data=RefStream(resolution, k), model=model, tokenizer=tokenizer)
        batches = iter(trainer.data)
        t0 = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step(batches)
        sync(device)
        warm = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = trainer.train_step(batches)
        float(loss)
        sync(device)
        sec = (time.perf_counter() - t0) / steps
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        ckpt = trainer.checkpointing
    del trainer, batches, model
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"k": k, "sec": sec, "warm": warm, "peak": peak, "ckpt": ckpt}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--refs", default="0,1,3")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args(argv)
    from core.tiny import build_tokenizer

    device = torch.device("cpu" if a.tiny else "cuda")
    tokenizer = build_tokenizer(CAPTION.replace(",", " ").split())
    resolution = 64 if a.tiny else 1024
    rows = []
    for k in (int(x) for x in a.refs.split(",")):
        r = measure(
            model_spec(a.tiny),
            None if a.tiny else 151936,
            tokenizer,
            device,
            k,
            resolution,
            a.steps,
            a.warmup,
            a.compile,
        )
        rows.append(r)
        print(r, flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"\n| references | s/step | peak GiB | grad. ckpt | warm-up s |  ({name}, {resolution}^2, "
        f"{'compiled' if a.compile else 'eager'})\n| ---: | ---: | ---: | --- | ---: |"
    )
    for r in rows:
        print(f"| {r['k']} | {r['sec']:.3f} | {r['peak']:.1f} | {r['ckpt']} | {r['warm']:.1f} |")


if __name__ == "__main__":
    main()
