"""What a key-padding mask costs the attention of a full-size layer, and which SDPA kernel takes it best.

    python bench/bench_attention.py            # H200: a table, microseconds per call
    python bench/bench_attention.py --tiny     # CPU smoke test (shapes / 16)

Shapes of HiDream-O1 at 1024^2 (32 query heads, 8 K/V heads, head dim 128, 1025 generation tokens):
- denoise: CFG as one batch of 2 rows (cond prompt of --prompt tokens, the " " negative of 6, both padded to
  the longer): generation queries over prefix + generation keys, forward only;
- train: one row, the whole sequence's generation queries over every key, forward + backward.
Variants: "mask" = core.model._sdpa as it runs with a key mask (K/V repeated to 32 heads, SDPA picks the
kernel); "mask-cudnn" / "mask-efficient" = the same with that backend forced; "nomask" = the same shape without
a mask (flash with GQA: the floor); "per-row" = each row alone over its own unpadded keys (no mask, 2 calls).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.model import _sdpa  # noqa: E402

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}


def timed(fn, reps: int, device) -> float:
    """Median microseconds of fn() over reps calls (CUDA events), after 3 warm-up calls."""
    for _ in range(3):
        fn()
    if device.type != "cuda":
        import time

        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps * 1e6
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return sorted(times)[len(times) // 2]


def case(name, q, k, v, mask, lengths, n_ar, backward: bool, reps: int, device) -> list[tuple[str, str, float]]:
    """Time each variant of one attention shape; `lengths` are the rows' real prefix lengths."""
    rows = []

    def run(f):
        def go():
            out = f()
            if backward:
                out.backward(torch.ones_like(out))
            return out

        return go

    def per_row():
        outs = []
        for b, n in enumerate(lengths):
            keep = torch.cat([torch.arange(n, device=device), torch.arange(n_ar, k.shape[2], device=device)])
            outs.append(_sdpa(q[b : b + 1], k[b : b + 1, :, keep], v[b : b + 1, :, keep]))
        return torch.cat(outs)

    variants = {
        "mask": lambda: _sdpa(q, k, v, mask=mask),
        "nomask": lambda: _sdpa(q, k, v),
        "per-row": per_row,
    }
    for label, fn in variants.items():
        rows.append((name, label, timed(run(fn), reps, device)))
    for label, backend in BACKENDS.items():
        if device.type != "cuda":
            continue
        try:
            with sdpa_kernel([backend]):
                rows.append((name, f"mask-{label}", timed(run(variants["mask"]), reps, device)))
        except RuntimeError as e:  # the backend refused the shape or the mask
            rows.append((name, f"mask-{label}", float("nan")))
            print(f"{name} mask-{label}: {str(e).splitlines()[0][:120]}", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--prompt", type=int, default=158, help="AR tokens of the cond prompt (template included)")
    ap.add_argument("--reps", type=int, default=50)
    a = ap.parse_args(argv)
    device = torch.device("cpu" if a.tiny else "cuda")
    dtype = torch.float32 if a.tiny else torch.bfloat16
    div = 16 if a.tiny else 1
    hq, hk, d, n_gen = (
        32 // (4 if a.tiny else 1),
        8 // (4 if a.tiny else 1),
        128 // (4 if a.tiny else 1),
        1025 // div,
    )
    n_ar = a.prompt // div
    reps = 3 if a.tiny else a.reps
    g = torch.Generator(device).manual_seed(0)

    def rnd(*shape, grad=False):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype).requires_grad_(grad)

    out = []
    # denoise: 2 rows (cond, uncond " ")
    lengths = [n_ar, 6 // div or 1]
    idx = torch.arange(n_ar + n_gen, device=device)
    mask = ((idx[None] < torch.tensor(lengths, device=device)[:, None]) | (idx[None] >= n_ar))[:, None, None, :]
    q, k, v = rnd(2, hq, n_gen, d), rnd(2, hk, n_ar + n_gen, d), rnd(2, hk, n_ar + n_gen, d)
    with torch.no_grad():
        out += case("denoise 1024^2 CFG", q, k, v, mask, lengths, n_ar, False, reps, device)
    # training: 1 row, prompt padded by up to 31 tokens (the trainer's 32-token buckets: 16 on average)
    pad = 16 // div or 1
    s = n_ar + pad + n_gen
    idx = torch.arange(s, device=device)
    mask = ((idx < n_ar) | (idx >= n_ar + pad))[None, None, None, :]
    q, k, v = rnd(1, hq, n_gen, d, grad=True), rnd(1, hk, s, d, grad=True), rnd(1, hk, s, d, grad=True)
    out += case("train 1024^2 fwd+bwd", q, k, v, mask, [n_ar], n_ar + pad, True, reps, device)

    print(f"\n{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    print("| shape | variant | us per call |\n|---|---|---:|")
    for name, label, us in out:
        print(f"| {name} | {label} | {us:.0f} |")


if __name__ == "__main__":
    main()
