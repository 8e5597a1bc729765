"""PNG encoding of a generated image: Pillow's encoder (what the worker used) against worker.png_encode.

    python bench/bench_png.py [--sizes 1024 2048] [--reps 5]

Three contents per size: noise (what random full-size weights generate: incompressible), a smooth gradient, and
a flat scene (the bundled model's kind). Per row: the best of --reps seconds and the file size; the last thing
printed is a markdown table.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from worker.png_encode import encode_png  # noqa: E402


def contents(side: int) -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side]
    smooth = np.stack([x * 255 // (side - 1), y * 255 // (side - 1), (x + 2 * y) * 255 // (3 * side)], -1)
    flat = np.full((side, side, 3), 212)
    flat[side // 4 : side // 2, side // 5 : side // 2] = (215, 35, 35)
    return {
        "noise": Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)),
        "smooth": Image.fromarray(smooth.astype(np.uint8)),
        "flat": Image.fromarray(flat.astype(np.uint8)),
    }


def pillow(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def best(fn, reps: int) -> tuple[float, int]:
    times, out = [], b""
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), len(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    workers = max(1, min(8, os.cpu_count() or 1))
    rows = []
    with ThreadPoolExecutor(workers) as pool:
        for side in a.sizes:
            for name, img in contents(side).items():
                p = best(lambda: pillow(img), a.reps)
                one = best(lambda: encode_png(img), a.reps)
                par = best(lambda: encode_png(img, pool, workers), a.reps)
                rows.append((side, name, p, one, par))
    print(f"\n{os.cpu_count()} CPUs, {workers} encoding threads")
    print("| size | content | Pillow level 1 | png_encode, 1 thread | png_encode, parallel | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for side, name, p, one, par in rows:
        cell = lambda r: f"{r[0] * 1e3:.0f} ms, {r[1] / 1e6:.2f} MB"  # noqa: E731
        print(f"| {side}^2 | {name} | {cell(p)} | {cell(one)} | {cell(par)} | {p[0] / par[0]:.1f}x |")


if __name__ == "__main__":
    main()
