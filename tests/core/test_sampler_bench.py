"""bench/bench_sampling.py --tiny: the GPU benchmark's code path runs on the CPU and its check holds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_sampling.py"


def test_bench_tiny_runs_and_paths_agree(capsys):
    spec = importlib.util.spec_from_file_location("bench_sampling", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(
        [
            "--tiny",
            "--sizes",
            "64",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--image-steps",
            "2",
            "--official-image",
            "--prompt-tokens",
            "20",
        ]
    )
    (r,) = rows
    assert r["same_x_pred"] and r["diff_ours_vs_official"] < 1e-5
    assert r["official_ms"] > 0 and r["ours_ms"] > 0 and r["ours_image_s"] > 0 and r["official_image_s"] > 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-3].startswith("| size |") and out[-1].startswith("| 64x64 |")  # the table comes last
