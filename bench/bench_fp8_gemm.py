"""The decoder's matmuls alone: bf16 vs fp8 with row-wise scales (what core.fp8 runs) vs fp8 with one scale per
tensor, at the shapes of a full-size 1024^2 CFG denoising step (issue 15).

    python bench/bench_fp8_gemm.py            # one GPU with fp8 matmuls (Ada, Hopper); ~20 s

M = 2,048 rows (two 1,024-token images: the prompt's row and the negative's); the seven linears of one decoder
layer (q, k, v, o, gate, up, down) at HiDream-O1's sizes. Times are CUDA-event medians of 50 calls after 10,
for the matmul only (the input's quantisation is timed on its own row), and TFLOPS from 2*M*N*K. Multiplied
by 36 layers this is the floor of a step's linear time for each format.
"""

from __future__ import annotations

import argparse
import statistics

import torch

SHAPES = {  # name: (out N, in K)
    "q": (4096, 4096),
    "k": (1024, 4096),
    "v": (1024, 4096),
    "o": (4096, 4096),
    "gate": (12288, 4096),
    "up": (12288, 4096),
    "down": (4096, 12288),
}
E4M3 = torch.float8_e4m3fn


def timed(fn, reps: int = 50) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048)
    a = ap.parse_args()
    m, dev = a.rows, "cuda"
    total = {"bf16": 0.0, "fp8 row-wise": 0.0, "fp8 tensor-wise": 0.0, "quantise input (row-wise)": 0.0}
    print("| linear | N x K | bf16 ms | fp8 row-wise ms | fp8 tensor-wise ms | row-wise TFLOPS |")
    print("|---|---|---:|---:|---:|---:|")
    for name, (n, k) in SHAPES.items():
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
        wq = (w.float() / (w.abs().amax(1, keepdim=True) / 448)).to(E4M3)
        ws = (w.abs().amax(1).float() / 448).view(1, -1)
        xq = (x.float() / (x.abs().amax(1, keepdim=True) / 448)).to(E4M3)
        xs = x.abs().amax(1, keepdim=True).float() / 448
        one = torch.ones((), device=dev)
        t_bf16 = timed(lambda: x @ w.t())
        t_row = timed(lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16))
        t_ten = timed(lambda: torch._scaled_mm(xq, wq.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16))

        def quantise():
            xf = x.float()
            s = xf.abs().amax(1, keepdim=True) / 448
            return (xf / s).to(E4M3), s

        t_q = timed(quantise)
        total["bf16"] += t_bf16
        total["fp8 row-wise"] += t_row
        total["fp8 tensor-wise"] += t_ten
        total["quantise input (row-wise)"] += t_q
        tf = 2 * m * n * k / (t_row / 1e3) / 1e12
        print(f"| {name} | {n} x {k} | {t_bf16:.3f} | {t_row:.3f} | {t_ten:.3f} | {tf:.0f} |")
    print("\nper layer: " + ", ".join(f"{k} {v:.3f} ms" for k, v in total.items()))
    print("x 36 layers: " + ", ".join(f"{k} {36 * v:.1f} ms" for k, v in total.items()))


if __name__ == "__main__":
    main()
