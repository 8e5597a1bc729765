"""Peak GPU memory of generation on a checkpoint folder (the numbers worker/memory_plan.py is built on).

    python bench/probe_memory.py --model /tmp/o1-full            # 1024^2 and 2048^2, 2 steps each, CFG on

Loads the model the way the generation worker does (core.loading, bf16, straight onto the GPU; prints how
long the read took), then per size one short eager Sampler call and the allocator's peak over it. Peaks of
training come from bench/bench_training.py (same card).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 2**30


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--sizes", default="1024,2048")
    ap.add_argument("--batch", type=int, default=1, help="images per request (CFG doubles the rows)")
    a = ap.parse_args(argv)
    from core.loading import load_model, load_tokenizer
    from core.sampler import Sampler

    t0 = time.perf_counter()
    tok = load_tokenizer(a.model)
    model = load_model(a.model, dtype=torch.bfloat16, device="cuda", tokenizer=tok)
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated() / GIB
    print(f"load: {time.perf_counter() - t0:.1f} s, weights {weights:.2f} GiB", flush=True)
    sampler = Sampler(model, tok, preview_every=0)
    rows = []
    for side in (int(s) for s in a.sizes.split(",")):
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.no_grad():
            sampler(
                ["a quiet harbour town at dusk, watercolour"] * a.batch,
                width=side,
                height=side,
                steps=2,
                guidance=5.0,
                seed=0,
            )
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / GIB
        rows.append((side, peak, time.perf_counter() - t0))
        print(f"  {side}: peak {peak:.2f} GiB ({peak - weights:.2f} over the weights)", flush=True)
    print("\n| generation | batch | peak GiB | over weights GiB |\n|---|---:|---:|---:|")
    for side, peak, _ in rows:
        print(f"| {side}^2 CFG | {a.batch} | {peak:.2f} | {peak - weights:.2f} |")


if __name__ == "__main__":
    main()
