"""One training job on 2 GPUs vs 1 (issue 12): images/s at 1024^2 through `python -m core.train` / torchrun and
through the service (O1LORA_TRAIN_PROCESSES=1 vs 2). Target: 2 GPUs >= 1.85x the images/s of one.
Wrapper for the `device` run: bench/bench_multi_gpu.sh (one call on nvidia-h200-x2, about 8 minutes).

    python -m core.fullsize /tmp/o1-full                                   # the random full-size checkpoint
    python bench/bench_multi_gpu.py --model /tmp/o1-full --out runs/multi-gpu --until $(( $(date +%s) + 540 ))

1. CLI paths (bench/bench_train_paths.py, each its own process as a user runs it; rank 16, batch 1 per GPU,
   32 PNGs of 1024^2 with captions, 40 steps, median s/step of the logged windows after the first):
   cli-auto (1 GPU), ddp2-auto (2 GPUs, DDP with the overlapped all-reduce), ddp2-after (2 GPUs, one
   all-reduce after backward: what the overlap buys).
2. The service (python -m ops.embedded, SQLite + its own Redis, over HTTP): the same dataset uploaded as a zip,
   one training of --train-steps steps with O1LORA_TRAIN_PROCESSES=1, then a fresh service with 2; s/step is
   the median of the job row's seconds_per_step readings after step 20. A training with 2 processes trains 2
   images per step (one per GPU).
Every stage is skipped when --until leaves it too little time. The table goes to stdout and OUT/table.md,
every number to OUT/multi_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def train_over_http(model: Path, out: Path, processes: int, steps: int, port: int, side: int = 1024) -> dict:
    """A fresh embedded service with `processes` training processes; one training over HTTP; its s/step."""
    import shutil

    from bench_service import Service, dataset_zip

    data = Path(f"/tmp/o1lora-multi-gpu-{processes}")
    shutil.rmtree(data, ignore_errors=True)
    env = {
        "O1LORA_TRAIN_PROCESSES": str(processes),
        "O1LORA_WARMUP_SIZES": "",  # no generation warm-up: this measures training only
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(max(processes, 1))),
    }
    svc = Service(model, data, port, out / f"service-{processes}.log", env)
    t0 = time.perf_counter()
    svc.start()
    try:
        z = dataset_zip(32, side)
        d = svc.ok(svc.http.post("/v1/datasets", files={"files": ("ds.zip", z, "application/zip")}))
        body = {
            "dataset_id": d["id"],
            "trigger": "sks style",
            "steps": steps,
            "rank": 16,
            "resolution": side,
            "batch_size": 1,
            "sample_every": 0,
            "validation_every": 0,
            "checkpoint_every": steps,
        }
        job = svc.ok(svc.http.post("/v1/trainings", json=body))
        seen: dict[int, float] = {}
        while True:
            j = svc.ok(svc.http.get(f"/v1/trainings/{job['id']}"))
            p = j["progress"]
            if p["seconds_per_step"] is not None:
                seen[p["step"]] = p["seconds_per_step"]
            if j["status"] in ("succeeded", "failed", "canceled"):
                break
            time.sleep(0.2)
        if j["status"] != "succeeded":
            raise RuntimeError(f"training {j['status']}: {j['error']}")
        steady = [v for s, v in sorted(seen.items()) if s > min(20, steps // 2)]
        sec = statistics.median(steady) if steady else None
        return {
            "processes": processes,
            "sec": sec,
            "images_per_s": processes / sec if sec else None,
            "readings": len(steady),
            "wall_s": time.perf_counter() - t0,
            "s_per_step_all": dict(sorted(seen.items())),
        }
    finally:
        svc.stop()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/tmp/o1-full")
    ap.add_argument("--out", default="runs/multi-gpu")
    ap.add_argument("--paths", default="cli-auto,ddp2-auto,ddp2-after")
    ap.add_argument("--steps", type=int, default=40, help="CLI paths")
    ap.add_argument("--train-steps", type=int, default=60, help="service trainings")
    ap.add_argument("--until", type=float, default=None, help="unix time by which to be done")
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--resolution", type=int, default=1024, help="a CPU smoke run of the script: 64")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    until = a.until or time.time() + 540
    R: dict = {"cli": {}, "service": {}, "skipped": []}

    def left() -> float:
        return until - time.time()

    from bench_train_paths import print_table, run_cli, write_dataset

    data = write_dataset(Path("/tmp/o1lora-train-paths") / f"data-{a.resolution}", side=a.resolution)
    rows = []
    for name in [n.strip() for n in a.paths.split(",") if n.strip()]:
        if left() < 100:
            R["skipped"].append(name)
            continue
        print(f"== {name}", flush=True)
        try:
            work = Path("/tmp/o1lora-train-paths")
            r = run_cli(name, a.model, data, work, a.steps, min(200, left() - 10), a.resolution)
        except Exception as e:  # a timeout or a crash of one path: the others still run
            r = {"error": repr(e)[:300], "wall_s": 0}
        print(f"   {r}", flush=True)
        rows.append((name, r))
        R["cli"][name] = r
    print_table(rows)
    for processes in (1, 2):
        if left() < 110:
            R["skipped"].append(f"service-{processes}")
            continue
        print(f"== service, {processes} training process(es)", flush=True)
        try:
            R["service"][processes] = train_over_http(
                Path(a.model), out, processes, a.train_steps, a.port, a.resolution
            )
        except Exception as e:
            R["service"][processes] = {"error": repr(e)[:500]}
        print(f"   {R['service'][processes]}", flush=True)
    table = make_table(R)
    print(table)
    (out / "table.md").write_text(table)
    (out / "multi_gpu.json").write_text(json.dumps(R, indent=1, default=str))
    return R


def make_table(R: dict) -> str:
    lines = ["| path | GPUs | s/step | images/s | vs 1 GPU |", "|---|---:|---:|---:|---:|"]
    one_cli = R["cli"].get("cli-auto", {}).get("sec")
    for name, r in R["cli"].items():
        if "sec" not in r:
            lines.append(f"| `{name}` | | {r.get('error')} | | |")
            continue
        gpus = r["images_per_step"]
        ips = gpus / r["sec"]
        scale = f"**{ips * one_cli:.2f}x**" if one_cli and gpus == 2 else "-"
        lines.append(f"| `{name}` | {gpus} | {r['sec']:.3f} | {ips:.2f} | {scale} |")
    one_svc = R["service"].get(1, {}).get("images_per_s")
    for p, r in R["service"].items():
        if r.get("sec") is None:
            lines.append(f"| service, O1LORA_TRAIN_PROCESSES={p} | | {r.get('error', 'no readings')} | | |")
            continue
        scale = f"**{r['images_per_s'] / one_svc:.2f}x**" if one_svc and p == 2 else "-"
        lines.append(
            f"| service, O1LORA_TRAIN_PROCESSES={p} | {p} | {r['sec']:.3f} | {r['images_per_s']:.2f} | {scale} |"
        )
    if R["skipped"]:
        lines.append(f"\nskipped (time): {', '.join(R['skipped'])}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
