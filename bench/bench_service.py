"""The service at full size on one GPU, driven over HTTP only: cold start, generation, training, LoRA switch,
concurrency, cancel, GPU memory. Wrapper: bench/bench_service.sh (what the `device` run executes).

    python bench/bench_service.py --model /tmp/o1-full --comfy /tmp/o1-comfy/o1-full.safetensors --out runs/svc

1. Writes the random full-size checkpoint (core.fullsize: HF shards + index + tokenizer + chat template, and
   the ComfyUI single file) unless --model already holds one.
2. Times a cold read of the shards (page cache dropped when allowed) and a load onto the GPU.
3. Starts the embedded service (python -m ops.embedded: SQLite, its own Redis, the API and one worker on
   both queues) and, over HTTP: the first 1024^2 image (cold start), steady-state 1024^2 images without and
   with LoRAs, a dataset upload (1024-px PNGs, one zip), a training (--train-steps), 2048^2 with and without
   the trained LoRA, switches between two LoRAs (the trained one and an imported ~90 MB file), 1 / 4 / 8
   concurrent requests, and a cancel. nvidia-smi is polled for the peak memory of every GPU process.
Every stage has a time budget (--budget seconds for all); a stage that would not fit is reported as skipped.
The table is printed last and written, with every raw number, to OUT/service.json and OUT/table.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

PROMPT = (
    "a quiet harbour town at dusk painted in loose watercolour washes, small boats resting on calm water "
    "that reflects warm orange lamps, narrow houses with blue shutters climbing a hill, soft clouds"
)


class GpuMemory(threading.Thread):
    """Peak used GPU memory per process (nvidia-smi every 0.5 s)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak: dict[int, int] = {}  # pid -> MiB
        self.names: dict[int, str] = {}  # pid -> what it runs
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                for line in out.strip().splitlines():
                    pid, mib = (int(x) for x in line.split(","))
                    self.peak[pid] = max(self.peak.get(pid, 0), mib)
                    if pid not in self.names:
                        try:
                            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                        except OSError:
                            cmd = "?"
                        self.names[pid] = (
                            "celery worker" if "celery" in cmd else "bench" if "bench_service" in cmd else cmd[:60]
                        )
            except Exception:
                pass
            self.stop.wait(0.5)


class Service:
    def __init__(self, model: Path, data: Path, port: int, log: Path, env: dict[str, str]):
        self.url = f"http://127.0.0.1:{port}"
        self.data, self.log_path = data, log
        self.env = {
            **os.environ,
            "O1LORA_DATA_DIR": str(data),
            "O1LORA_MODEL_PATH": str(model),
            "O1LORA_TRAIN_PROCESSES": "1",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.proc: subprocess.Popen | None = None
        self.side, self.steps = 1024, 50

    def start(self) -> float:
        self.t0 = time.perf_counter()
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ops.embedded", "--port", self.url.rsplit(":", 1)[1]],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        import httpx

        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}; see {self.log_path}")
            try:
                httpx.get(self.url + "/health", timeout=2)
                break
            except Exception:
                time.sleep(0.2)
        key = (self.data / "api_key").read_text().strip()
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=600)
        return time.perf_counter() - self.t0

    def log_lines(self, text: str) -> list[str]:
        return [ln for ln in self.log_path.read_text(errors="replace").splitlines() if text in ln]

    def wait_warm(self, count: int, timeout: float = 120) -> float | None:
        """Seconds waited until the worker has logged `count` warm-ups of the main size (None: it did not within
        `timeout`, e.g. no warm-up configured): timed series start on a warm worker, not during its warm-up."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if len(self.log_lines(f"warm-up {self.side}x{self.side}:")) >= count:
                return time.perf_counter() - t0
            time.sleep(0.2)
        return None

    def phases(self) -> list[dict]:
        """The worker's per-request breakdown lines (worker.generation): one dict per batch."""
        out = []
        for ln in self.log_lines("; kept graph "):
            m = re.search(
                r"generation (\S+): (\d+) image\(s\) (\d+)x(\d+), (\d+) steps, ([\d.]+) s \((.*)\); kept graph (\w+)",
                ln,
            )
            if m:
                parts = dict((k, float(v)) for k, v in (p.split() for p in m.group(7).split(", ")))
                out.append(
                    {"ids": m.group(1), "images": int(m.group(2)), "side": int(m.group(3)), "total": float(m.group(6)),
                     "kept": m.group(8) == "yes", **parts}
                )  # fmt: skip
        return out

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()

    # ------------------------------------------------------------------------------ requests
    def ok(self, r):
        if r.status_code >= 400:
            raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else None

    def generate(self, *, side=None, loras=(), seed=0, n=1, steps=None, wait=True) -> dict:
        side, steps = side or self.side, steps or self.steps
        body = {
            "prompt": PROMPT,
            "width": side,
            "height": side,
            "steps": steps,
            "guidance": 5.0,
            "seed": seed,
            "num_images": n,
            "loras": [{"id": i, "scale": s} for i, s in loras],
        }
        t0 = time.perf_counter()
        g = self.ok(self.http.post("/v1/generations", json=body))
        return self.wait_generation(g["id"], t0) if wait else {"id": g["id"], "t0": t0}

    def wait_generation(self, gid: str, t0: float, poll: float = 0.05) -> dict:
        while True:
            g = self.ok(self.http.get(f"/v1/generations/{gid}"))
            if g["status"] in ("succeeded", "failed", "canceled"):
                g["seconds"] = time.perf_counter() - t0
                if g["status"] == "failed":
                    raise RuntimeError(f"generation failed: {g['error']}")
                return g
            time.sleep(poll)


def write_checkpoint(model: Path, comfy: Path | None) -> dict:
    from core.fullsize import write_comfy_file, write_full_checkpoint

    out = {}
    if not (model / "model.safetensors.index.json").is_file():
        out["hf"] = write_full_checkpoint(model, log=lambda s: None)["seconds"]
    if comfy and not comfy.is_file():
        out["comfy"] = write_comfy_file(model, comfy)["seconds"]
    return out


def read_and_load(model: Path) -> dict:
    """Cold disk read of the shards (page cache dropped when we may), then core.loading onto the GPU."""
    import torch

    from core.loading import load_model, load_tokenizer

    dropped = False
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        dropped = True
    except OSError:
        pass
    t0 = time.perf_counter()
    size = 0
    for f in sorted(model.glob("*.safetensors")):
        with open(f, "rb") as fh:
            while chunk := fh.read(64 << 20):
                size += len(chunk)
    read = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = load_model(model, dtype=torch.bfloat16, device="cuda", tokenizer=load_tokenizer(model))
    torch.cuda.synchronize()
    load = time.perf_counter() - t0
    del m
    torch.cuda.empty_cache()
    return {"cache_dropped": dropped, "read_s": read, "read_gbps": size / read / 1e9, "load_warm_s": load}


def eager_check(model: Path, png: Path, seed: int, side: int, steps: int, base_precision: str = "bf16") -> dict:
    """The same request through core.sampler's eager path, in this process, against the service's PNG."""
    import numpy as np
    import torch
    from PIL import Image

    from core.loading import load_model, load_tokenizer
    from core.sampler import Sampler

    tok = load_tokenizer(model)
    from core.fp8 import resolve_base_precision

    precision = resolve_base_precision(base_precision, "cuda")  # the service's, "auto" included
    m = load_model(model, dtype=torch.bfloat16, device="cuda", tokenizer=tok, base_precision=precision)
    with torch.no_grad():
        img = Sampler(m, tok, preview_every=0)(
            [PROMPT],
            negative_prompt=" ",
            width=side,
            height=side,
            steps=steps,
            guidance=5.0,
            seed=seed,
            preset="full",
        )[0]
    a = np.asarray(img, dtype=np.float64)
    b = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    d = np.abs(a - b)
    mse = float((d**2).mean())
    return {
        "mean_abs_diff_0_255": float(d.mean()),
        "max_abs_diff": float(d.max()),
        "pixels_off_by_more_than_8": float((d.max(-1) > 8).mean()),
        "psnr_db": float(10 * np.log10(255**2 / mse)) if mse else float("inf"),
    }


def random_lora_file(model: Path, path: Path, seed: int = 1) -> Path:
    """A rank-16 LoRA on the 252 linears of the full model, random, as a ComfyUI file (~87 MB in bf16)."""
    import torch

    from core.loading import load_config
    from core.lora import LoraSpec, adapter_state_dict, inject_lora, save_comfyui_file
    from core.model import HiDreamO1

    with torch.device("meta"):
        meta = HiDreamO1(load_config(model))
    spec = LoraSpec(rank=16, alpha=16.0)
    inject_lora(meta, spec)
    g = torch.Generator().manual_seed(seed)
    adapter = {
        k: (torch.randn(v.shape, generator=g) * (0.02 if ".lora_B" in k else 1 / v.shape[1] ** 0.5)).to(
            torch.bfloat16
        )
        for k, v in adapter_state_dict(meta).items()
    }
    return save_comfyui_file(adapter, spec, path)


def dataset_zip(n: int, side: int) -> bytes:
    from bench_train_paths import write_dataset

    folder = write_dataset(Path(f"/tmp/o1lora-svc-data-{side}"), n=n, side=side)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f.name)
    return buf.getvalue()


def st_ok(R: dict, name: str) -> bool:
    return name in R["stages"]


class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/tmp/o1-full")
    ap.add_argument("--comfy", default="/tmp/o1-comfy/o1-full.safetensors")
    ap.add_argument("--out", default="runs/bench-service")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--data", default="/tmp/o1lora-bench-service", help="the service's data folder (emptied)")
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--skip-read-load", action="store_true", help="no cold disk read / load stage (saves ~40 s)")
    ap.add_argument("--images", type=int, default=3, help="timed 1024^2 images per setting")
    ap.add_argument("--budget", type=float, default=480, help="seconds for everything after the checkpoint")
    ap.add_argument("--until", type=float, default=None, help="unix time by which to be done (overrides --budget)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the service (repeatable)")
    ap.add_argument("--side", type=int, default=1024, help="the main image side (a CPU smoke run: 256)")
    ap.add_argument("--big", type=int, default=2048, help="the large image side")
    ap.add_argument("--gen-steps", type=int, default=50)
    ap.add_argument(
        "--base-precision",
        default=None,
        help="bf16|fp8 for the generation worker (O1LORA_GENERATE_BASE_PRECISION) and the training's base_precision",
    )
    ap.add_argument("--read-and-load", help=argparse.SUPPRESS)  # the child process of that stage
    ap.add_argument("--eager-check", nargs=2, help=argparse.SUPPRESS)  # PNG SEED: child process
    a = ap.parse_args(argv)
    if a.read_and_load:
        print(json.dumps(read_and_load(Path(a.read_and_load))))
        return {}
    if a.eager_check:
        print(
            json.dumps(
                eager_check(
                    Path(a.model),
                    Path(a.eager_check[0]),
                    int(a.eager_check[1]),
                    a.side,
                    a.gen_steps,
                    a.base_precision or "auto",
                )
            )
        )
        return {}
    t_start = time.perf_counter()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, comfy = Path(a.model), Path(a.comfy) if a.comfy else None
    R: dict = {"stages": {}, "skipped": [], "errors": []}

    def stage(name, seconds_needed, fn):
        if budget.left() < seconds_needed:
            R["skipped"].append(name)
            print(f"== {name}: skipped ({budget.left():.0f} s left, needs ~{seconds_needed})", flush=True)
            return None
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            v = fn()
            R["stages"][name] = {"s": time.perf_counter() - t0, "value": v}
            print(f"   {name}: {json.dumps(v, default=str)[:400]} ({time.perf_counter() - t0:.1f} s)", flush=True)
            return v
        except Exception as e:
            R["errors"].append(f"{name}: {type(e).__name__}: {e}")
            print(f"   {name} FAILED: {type(e).__name__}: {e}", flush=True)
            return None

    R["checkpoint"] = write_checkpoint(model, comfy)
    print(f"checkpoint: {R['checkpoint']}", flush=True)
    budget = Budget(a.until - time.time() - 15 if a.until else a.budget)  # 15 s: stopping the service
    if not a.skip_read_load:
        stage(
            "disk read + load",
            60,
            lambda: json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--read-and-load", str(model)],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            ),
        )
    lora_file = random_lora_file(model, Path("/tmp/o1lora-imported-lora.safetensors"))

    data = Path(a.data)
    shutil.rmtree(data, ignore_errors=True)
    env = dict(kv.split("=", 1) for kv in a.env)
    if a.base_precision:
        env.setdefault("O1LORA_GENERATE_BASE_PRECISION", a.base_precision)
    svc = Service(model, data, a.port, out_dir / "service.log", env)
    svc.side, svc.steps = a.side, a.gen_steps
    gpu = GpuMemory()
    gpu.start()
    fast_png = out_dir / "fast-seed100.png"
    fast_png.unlink(missing_ok=True)
    try:
        R["api_up_s"] = svc.start()
        t_proc = svc.t0

        def first_image():
            g = svc.generate(seed=0)
            return {"request_s": g["seconds"], "process_start_to_image_s": time.perf_counter() - t_proc}

        stage("cold start", 200, first_image)

        def series(n, keep=False, **kw):
            times = []
            for i in range(n):
                g = svc.generate(seed=100 + i, **kw)
                times.append(g["seconds"])
                if keep and i == 0:
                    fast_png.write_bytes(svc.http.get(g["images"][0]["url"]).content)
            return times

        R["warm_wait_s"] = [svc.wait_warm(1)]
        stage("1024 no LoRA", 30, lambda: series(a.images, keep=True))

        def imported():
            with open(lora_file, "rb") as f:
                return svc.ok(
                    svc.http.post(
                        "/v1/loras", files={"file": ("imported.safetensors", f)}, data={"name": "imported"}
                    )
                )["id"]

        imported_id = stage("import LoRA (HTTP)", 20, imported)

        def upload():
            z = dataset_zip(16, a.side)
            t0 = time.perf_counter()
            d = svc.ok(
                svc.http.post(
                    "/v1/datasets", files={"files": ("ds.zip", z, "application/zip")}, data={"name": "bench"}
                )
            )
            return {"id": d["id"], "images": d["num_images"], "mb": len(z) / 1e6, "s": time.perf_counter() - t0}

        ds = stage("dataset upload", 30, upload)

        def train():
            body = {
                "dataset_id": ds["id"],
                "trigger": "sks style",
                "steps": a.train_steps,
                "rank": 16,
                "resolution": a.side,
                "batch_size": 1,
                "sample_every": 0,
                "checkpoint_every": max(1, a.train_steps // 2),
                **({"base_precision": a.base_precision} if a.base_precision else {}),
            }
            t0 = time.perf_counter()
            job = svc.ok(svc.http.post("/v1/trainings", json=body))
            seen, t_running = {}, None
            while True:
                j = svc.ok(svc.http.get(f"/v1/trainings/{job['id']}"))
                if j["status"] == "running" and t_running is None:
                    t_running = time.perf_counter()
                p = j["progress"]
                if p["seconds_per_step"] is not None:
                    seen[p["step"]] = p["seconds_per_step"]
                if j["status"] in ("succeeded", "failed", "canceled"):
                    break
                time.sleep(0.2)
            if j["status"] != "succeeded":
                raise RuntimeError(f"training {j['status']}: {j['error']}")
            steady = [v for s, v in sorted(seen.items()) if s > min(20, a.train_steps // 2)]
            return {
                "lora_id": j["lora_id"],
                "steps": a.train_steps,
                "wall_s": time.perf_counter() - t0,
                "s_per_step_median": statistics.median(steady) if steady else None,
                "samples": len(steady),
                "s_per_step_all": dict(sorted(seen.items())),
            }

        tr = stage("training (HTTP)", 40 + a.train_steps * 0.5, train)
        lora_id = tr["lora_id"] if tr else None

        stage("first image after training (reload)", 20, lambda: svc.generate(seed=1)["seconds"])
        if lora_id:
            R["warm_wait_s"].append(svc.wait_warm(2))  # the base is reloaded and warmed again after a training
            stage("1024 LoRA", 30, lambda: series(a.images, loras=[(lora_id, 1.0)]))
            if imported_id:

                def switches():
                    same = [svc.generate(seed=3, loras=[(lora_id, 1.0)])["seconds"] for _ in range(2)]
                    sw = []
                    for i in range(2):
                        sw.append(svc.generate(seed=3, loras=[(imported_id, 0.8)])["seconds"])
                        sw.append(svc.generate(seed=3, loras=[(lora_id, 1.0)])["seconds"])
                    first_imported = sw[0]
                    return {
                        "same_lora_s": same,
                        "alternating_s": sw,
                        "first_use_of_imported_s": first_imported,
                        "switch_cost_s": statistics.median(sw[1:]) - statistics.median(same),
                    }

                stage("LoRA switch", 40, switches)

        def concurrent(k):
            t0 = time.perf_counter()
            subs = [svc.generate(seed=200 + i, wait=False) for i in range(k)]
            for s in subs:
                svc.wait_generation(s["id"], s["t0"])
            wall = time.perf_counter() - t0
            return {"requests": k, "wall_s": wall, "images_per_s": k / wall}

        stage("concurrent 4", 30, lambda: concurrent(4))
        stage("concurrent 8", 45, lambda: concurrent(8))

        def cancel():
            g = svc.generate(seed=300, n=4, wait=False)
            while svc.ok(svc.http.get(f"/v1/generations/{g['id']}"))["status"] != "running":
                time.sleep(0.05)
            time.sleep(1.0)
            t0 = time.perf_counter()
            r = svc.http.post(f"/v1/generations/{g['id']}/cancel")
            if r.status_code >= 400:
                svc.wait_generation(g["id"], g["t0"])
                return {"cancel_http": r.status_code, "note": r.text[:160]}
            end = svc.wait_generation(g["id"], t0)
            return {
                "cancel_http": r.status_code,
                "status": end["status"],
                "to_final_s": end["seconds"],
                "images_kept": len(end["images"]),
            }

        stage("cancel", 20, cancel)
        # last: the first request of a new size compiles (~2 min at 2048 in the dry run); 50 s stay for the
        # eager comparison after the service stops
        stage("2048 no LoRA (first: compile)", 150 + 50, lambda: series(2, side=a.big))
        if lora_id and st_ok(R, "2048 no LoRA (first: compile)"):
            stage("2048 LoRA", 15 + 50, lambda: series(1, side=a.big, loras=[(lora_id, 1.0)]))
    finally:
        svc.stop()
        gpu.stop.set()
        if fast_png.is_file():
            stage(
                "fast path vs eager (same request)",
                40,
                lambda: json.loads(
                    subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--eager-check",
                            str(fast_png),
                            "100",
                            "--model",
                            str(model),
                            "--side",
                            str(a.side),
                            "--gen-steps",
                            str(a.gen_steps),
                            "--base-precision",
                            a.base_precision or "auto",
                        ],
                        cwd=REPO,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    .stdout.strip()
                    .splitlines()[-1]
                ),
            )
        R["gpu_peak_mib_by_pid"] = gpu.peak
        R["gpu_process_names"] = gpu.names
        R["total_s"] = time.perf_counter() - t_start
        # the worker's own seconds per generation task (claim -> images stored), in order: what the API adds is the rest
        R["generate_task_s"] = [
            round(float(x), 3)
            for x in re.findall(
                r"Task o1lora\.generate\[[^\]]+\] succeeded in ([0-9.]+)s",
                (out_dir / "service.log").read_text(errors="replace"),
            )
        ]
        R["phases"] = svc.phases()
        (out_dir / "service.json").write_text(json.dumps(R, indent=2, default=str))
    R["log_lines"] = [
        ln
        for ln in (out_dir / "service.log").read_text(errors="replace").splitlines()
        if re.search(r"warm|compil|load|releas|memory plan|LoRA|Traceback|Error", ln)
    ][-40:]
    print("\n".join(R["log_lines"]))
    table = make_table(R)
    (out_dir / "table.md").write_text(table + "\n")
    print("\n" + table, flush=True)
    return R


def make_table(R: dict) -> str:
    st = {k: v["value"] for k, v in R["stages"].items()}

    def med(name):
        v = st.get(name)
        return f"{statistics.median(v):.2f} s" if v else "-"

    rows = [
        (
            "checkpoint write (HF shards / ComfyUI file)",
            " / ".join(f"{v:.0f} s" for v in R["checkpoint"].values()) or "existing",
        )
    ]
    if dl := st.get("disk read + load"):
        rows.append(
            (
                "disk read of the shards (page cache dropped: %s)" % dl["cache_dropped"],
                f"{dl['read_s']:.1f} s ({dl['read_gbps']:.2f} GB/s)",
            )
        )
        rows.append(("load onto the GPU from page cache", f"{dl['load_warm_s']:.1f} s"))
    rows.append(("API answering after process start", f"{R.get('api_up_s', float('nan')):.1f} s"))
    if cs := st.get("cold start"):
        rows.append(("cold start: process start -> first 1024^2 image", f"{cs['process_start_to_image_s']:.1f} s"))
    rows.append(("1024^2, 50 steps, CFG 5, no LoRA (per image, via API)", med("1024 no LoRA")))
    rows.append(("1024^2 with the trained LoRA", med("1024 LoRA")))
    if st.get("1024 no LoRA") and st.get("1024 LoRA"):
        rows.append(
            ("LoRA cost", f"{statistics.median(st['1024 LoRA']) / statistics.median(st['1024 no LoRA']) - 1:+.1%}")
        )
    v = st.get("2048 no LoRA (first: compile)")
    rows.append(("2048^2 no LoRA (first / second)", " / ".join(f"{x:.1f} s" for x in v) if v else "-"))
    rows.append(("2048^2 with the LoRA", med("2048 LoRA")))
    if sw := st.get("LoRA switch"):
        rows.append(("LoRA switch (alternating minus same LoRA, per request)", f"{sw['switch_cost_s']:+.2f} s"))
        rows.append(("first use of the imported 87 MB LoRA (request)", f"{sw['first_use_of_imported_s']:.2f} s"))
    if tr := st.get("training (HTTP)"):
        rows.append(
            (
                f"training via API, s/step (median after step 20; {tr['steps']} steps)",
                f"{tr['s_per_step_median']:.3f}" if tr["s_per_step_median"] else "-",
            )
        )
        rows.append(("training via API, wall incl. load/compile/checkpoints", f"{tr['wall_s']:.0f} s"))
    if (fa := st.get("first image after training (reload)")) is not None:
        rows.append(("first image after a training (base reloaded)", f"{fa:.1f} s"))
    if st.get("1024 no LoRA"):
        rows.append(("images/s, 1 request at a time", f"{1 / statistics.median(st['1024 no LoRA']):.3f}"))
    for k in (4, 8):
        if c := st.get(f"concurrent {k}"):
            rows.append((f"images/s, {k} concurrent requests", f"{c['images_per_s']:.3f}"))
    if c := st.get("fast path vs eager (same request)"):
        rows.append(
            (
                "service image vs eager core.sampler, same request (0-255 levels)",
                f"mean |d| {c['mean_abs_diff_0_255']:.2f}, max {c['max_abs_diff']:.0f}, "
                f"{c['pixels_off_by_more_than_8']:.2%} px off by > 8, PSNR {c['psnr_db']:.1f} dB",
            )
        )
    if c := st.get("cancel"):
        rows.append(("cancel a running 4-image generation", json.dumps(c)))
    names = R.get("gpu_process_names", {})
    for pid, mib in sorted(R.get("gpu_peak_mib_by_pid", {}).items()):
        rows.append(
            (
                f"peak GPU memory, {names.get(pid, 'process')} {pid} (nvidia-smi, whole process)",
                f"{mib / 1024:.1f} GiB",
            )
        )
    if w := R.get("warm_wait_s"):
        rows.append(("waited for the worker's warm-up before the timed series", " / ".join(
            "-" if x is None else f"{x:.1f} s" for x in w)))  # fmt: skip
    steady = [p for p in R.get("phases", [])[1:] if p["images"] == 1 and p["side"] == 1024]  # after the cold one
    if steady:
        names = [k for k in steady[0] if k not in ("ids", "images", "side", "total", "kept")]
        rows.append(
            (
                f"worker task of a one-image 1024^2 request, median of {len(steady)} (kept graph replayed in "
                f"{sum(p['kept'] for p in steady)})",
                f"{statistics.median(p['total'] for p in steady):.3f} s: "
                + ", ".join(f"{k} {statistics.median(p[k] for p in steady):.3f}" for k in names),
            )
        )
    for e in R["errors"]:
        rows.append(("error", e[:200]))
    for s in R["skipped"]:
        rows.append(("skipped (time budget)", s))
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


if __name__ == "__main__":
    main()
