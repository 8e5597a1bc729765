"""Training seconds per step on a real checkpoint folder: bench_training.py vs `python -m core.train` vs torchrun.

    python -m core.fullsize /tmp/o1-full                                    # the random full-size checkpoint
    python bench/bench_train_paths.py --model /tmp/o1-full                  # every path, table last
    python bench/bench_train_paths.py --model /tmp/o1-full --paths bench,cli,ddp2 --steps 40

Each path is its own process, as a user runs it. The CLI paths train rank 16 at 1024^2, batch 1, on a folder
of 32 PNGs of 1024^2 with captions (written once under --work), log every 10 steps, and the table takes the
median seconds/step of the logged windows after the first (which holds the compilation), as the CLI prints it. Paths:
  bench        bench/bench_training.py --variants ours (random model built on the GPU, streamed random images)
  bench-nockpt bench/bench_training.py --variants ours-nockpt (the setting "auto" picks where activations fit)
  bench-varied bench/bench_training.py --variants ours-varied (bench-nockpt on captions of 12 lengths)
  cli          python -m core.train as shipped (compile auto = on, DataLoader workers), checkpointing on
  cli-eager    the same with --compile off: what the CLI did before compile became the CUDA default
  cli-auto     the CLI's defaults end to end (checkpointing auto: off when the activations fit)
  cli-inline   checkpointing on, num_workers 0, log every step: the service worker's settings
  ddp2         torchrun --nproc_per_node 2 -m core.train, as `cli` (images/s = 2 / s/step)
  ddp2-auto    torchrun, 2 GPUs, as `cli-auto` (issue 12's measure: >= 1.85x its images/s)
  ddp2-after   ddp2-auto with --grad_sync after (one all-reduce after backward: what the overlap saves)
  cli-svc      the service worker's trainer settings (num_workers 0, a report every step), checkpointing auto
  ddp2-svc     cli-svc on 2 GPUs under torchrun (what O1LORA_TRAIN_PROCESSES=2 runs, without the service)
The "vs 1 GPU" column divides a ddp2 path's images/s by its one-GPU twin's (ONE_GPU).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLI_COMMON = [
    "--rank",
    "16",
    "--batch_size",
    "1",
    "--checkpoint_every",
    "0",
    "--sample_every",
    "0",
    "--trigger",
    "sks style",
]
PATHS = {
    "cli": ["--gradient_checkpointing", "on", "--log_every", "10"],
    "cli-eager": ["--gradient_checkpointing", "on", "--log_every", "10", "--compile", "off"],
    "cli-auto": ["--log_every", "10"],
    "cli-inline": ["--gradient_checkpointing", "on", "--log_every", "1", "--num_workers", "0"],
    "ddp2": ["--gradient_checkpointing", "on", "--log_every", "10"],
    "ddp2-auto": ["--log_every", "10"],
    "ddp2-after": ["--log_every", "10", "--grad_sync", "after"],
    "cli-svc": ["--log_every", "1", "--num_workers", "0"],
    "ddp2-svc": ["--log_every", "1", "--num_workers", "0"],
}
ONE_GPU = {"ddp2": "cli", "ddp2-auto": "cli-auto", "ddp2-after": "cli-auto", "ddp2-svc": "cli-svc"}
BENCH_VARIANTS = {"bench": "ours", "bench-nockpt": "ours-nockpt", "bench-varied": "ours-varied"}
CAPTION = (
    "a quiet harbour town at dusk painted in loose watercolour washes, small boats resting on calm water "
    "that reflects warm orange lamps, narrow houses with blue shutters climbing a hill"
)


def write_dataset(folder: Path, n: int = 32, side: int = 1024) -> Path:
    """n photo-like PNGs (smooth colour fields + grain: ~1-3 MB, decoding costs what real photos cost)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    for i in range(n):
        if (folder / f"{i:03d}.png").is_file():
            continue
        c = rng.uniform(0, 255, (3, 3))
        img = np.stack([c[k, 0] * xx + c[k, 1] * yy + c[k, 2] * (1 - xx) for k in range(3)], -1) / 1.5
        img += rng.normal(0, 12, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"{CAPTION}, picture {i}")
    return folder


def _steady(text: str) -> float | None:
    """The CLI's closing line: median s/step of the logged windows after the first (compilation)."""
    m = re.search(r"seconds/step: ([0-9.]+) \(median", text)
    return float(m.group(1)) if m else None


def run_cli(
    name: str, model: str, data: Path, work: Path, steps: int, timeout: float, resolution: int = 1024
) -> dict:
    args = [
        "-m",
        "core.train",
        "--model",
        model,
        "--data_dir",
        str(data),
        "--out_dir",
        str(work / name),
        "--steps",
        str(steps),
        "--resolution",
        str(resolution),
        *CLI_COMMON,
        *PATHS[name],
    ]
    if name.startswith("ddp2"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    else:
        cmd = [sys.executable, *args]
    t0 = time.perf_counter()
    p = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    wall = time.perf_counter() - t0
    text = p.stdout + p.stderr
    if p.returncode:
        print(text[-3000:], flush=True)
        return {"error": f"exit {p.returncode}", "wall_s": wall}
    sec = _steady(text)
    if sec is None:
        print(text[-3000:], flush=True)
        return {"error": "no seconds/step line", "wall_s": wall}
    peak = re.search(r"peak GPU memory: ([0-9.]+) GiB allocated, ([0-9.]+) GiB reserved", text)
    return {
        "sec": sec,
        "wall_s": wall,
        "images_per_step": 2 if name.startswith("ddp2") else 1,
        "peak_gib": float(peak.group(1)) if peak else None,
        "reserved_gib": float(peak.group(2)) if peak else None,
    }


def run_bench(steps: int, timeout: float, variant: str = "ours") -> dict:
    cmd = [sys.executable, "bench/bench_training.py", "--variants", variant, "--steps", str(steps)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    text = p.stdout + p.stderr
    m = re.search(rf"\| {variant} \| 1024 \| 1 \| o[nf]+ \| on \| ([0-9.]+) \|", text)
    if p.returncode or not m:
        print(text[-3000:], flush=True)
        return {"error": f"exit {p.returncode}", "wall_s": time.perf_counter() - t0}
    peak = re.search(r"peak ([0-9.]+) GiB", text)
    return {
        "sec": float(m.group(1)),
        "wall_s": time.perf_counter() - t0,
        "images_per_step": 1,
        "peak_gib": float(peak.group(1)) if peak else None,
    }


def main(argv=None) -> list[tuple[str, dict]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="checkpoint folder (python -m core.fullsize writes one)")
    ap.add_argument("--paths", default="bench,cli,cli-eager,ddp2,cli-inline,cli-auto")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--work", default="/tmp/o1lora-train-paths")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per path")
    ap.add_argument("--resolution", type=int, default=1024, help="CLI paths only (bench: 1024)")
    a = ap.parse_args(argv)
    work = Path(a.work)
    data = write_dataset(work / f"data-{a.resolution}", side=a.resolution)
    rows = []
    for name in [n.strip() for n in a.paths.split(",") if n.strip()]:
        print(f"== {name}", flush=True)
        try:
            r = (
                run_bench(a.steps, a.timeout, BENCH_VARIANTS[name])
                if name.startswith("bench")
                else run_cli(name, a.model, data, work, a.steps, a.timeout, a.resolution)
            )
        except subprocess.TimeoutExpired:
            r = {"error": f"over {a.timeout:.0f} s", "wall_s": a.timeout}
        print(f"   {r}", flush=True)
        rows.append((name, r))
    print_table(rows)
    return rows


def print_table(rows) -> None:
    base = next((r["sec"] for n, r in rows if n.startswith("bench") and "sec" in r), None)
    sec = {n: r["sec"] for n, r in rows if "sec" in r}
    print(
        "\n| path | s/step | images/s | vs bench s/step | vs 1 GPU images/s | process wall s | peak GiB (reserved) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        if "sec" not in r:
            print(f"| {name} | {r['error']} | | | | {r['wall_s']:.0f} | |")
            continue
        peak = f"{r['peak_gib']} ({r.get('reserved_gib', '-')})" if r.get("peak_gib") else "-"
        ips = r["images_per_step"] / r["sec"]
        vs = f"{r['sec'] / base:.3f}x" if base else "-"
        one = sec.get(ONE_GPU.get(name, ""))  # seconds per image on one GPU (batch 1)
        scale = f"{ips * one:.2f}x" if one else "-"
        print(f"| {name} | {r['sec']:.3f} | {ips:.2f} | {vs} | {scale} | {r['wall_s']:.0f} | {peak} |")


if __name__ == "__main__":
    main()
