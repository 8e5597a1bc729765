"""`make demo`: the service on its embedded default learns a style over HTTP and shows, with scores, what it does.

    python -m ops.demo                      # runs/demo/grid.png + scores.json; ~14 min on 2 busy CPU cores
    python -m ops.demo --steps 4 --images 4 --prompts 2 --gen-steps 2 --out /tmp/demo   # a smoke run

It starts `python -m ops.embedded` (own Redis, SQLite, API, one worker) on the bundled model, writes a
core.synth dataset in the "shaded" style (each shape lit from above: its colour darkens towards its bottom) with
the trigger in front of each caption, uploads it as a zip and trains with the service's default preset ("bundled"
on the bundled model: the request names only the dataset, the trigger and a preview prompt). That preset has the
base model draw each caption without the trigger first, and trains on those images as reg/ images, so the LoRA
stays off without its trigger (core/train/prior.py; --reg-ratio uploads rendered plain twins instead). Then it generates
held-out prompts (core.synth stream 999, never trained on) with the same seeds four ways: the base model without
and with the trigger, the LoRA with and without it, scores every image with core.synth (shading score, and
whether background, region and colour follow the prompt) and writes a grid of the first prompts, labelled, with
the scores of all of them printed under it (docs/evidence.md section 5 has a run).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from ops.broker import free_port
from service.settings import BUNDLED_MODEL as BUNDLED
from service.settings import REPO

# In front of the scene, the usual LoRA convention. The bundled model reads the scene sentence by token position,
# so a phrase in front moves the base model's shapes (docs/evidence.md section 2), but the shaded LoRA relearns
# the placement (following 1.00 with it) and gates better there: without the trigger it leaked +0.13 of shading
# with the trigger in front, +0.28 with it after the scene (bench/style_lora_bundled.py, docs/evidence.md section 5).
TRIGGER = "in shaded style"
TRIGGER_AT = "start"
EVAL_STREAM = 999  # core.synth's held-out scene stream (the dataset and its paired reg/ images use stream 7)
COLUMNS = ("base", "base, trigger", "LoRA, trigger", "LoRA, no trigger")
# Issue 13's targets for the first LoRA (shading score and prompt following, means over the held-out prompts).
# The style: shading changes every pixel of a shape smoothly, which the bundled model's LoRA learns in minutes,
# where a bold outline (the first choice, a 2-4 px detail) gained +0.04 (docs/evidence.md section 5).
STYLE = "shaded"
STYLE_KEY = "shading_score"
STYLE_GAIN_MIN = 0.5  # LoRA with trigger over the base model with the same prompt
LEAK_MAX = 0.05  # LoRA without trigger over the base model without it
FOLLOW_TOLERANCE = 0.05  # LoRA with trigger vs the base model without it, for background, region and colour
FOLLOW_KEYS = ("background_ok", "region_acc", "colour_acc")


def prompt(scene, trigger: bool) -> str:
    return scene.caption(TRIGGER if trigger else "", at=TRIGGER_AT)


def start_service(data_dir: Path, model: Path, port: int) -> tuple[subprocess.Popen, str]:
    """The embedded service in a child process; returns it and the API key it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("O1LORA_")}  # the embedded default, as shipped
    env.update(O1LORA_DATA_DIR=str(data_dir), O1LORA_MODEL_PATH=str(model))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.embedded", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the embedded service exited:\n" + "".join(seen[-40:]))
        seen.append(line)
        m = re.match(r"API key: (\S+)", line)
        if m:
            return proc, m.group(1)


def stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_done(http: httpx.Client, path: str, label: str, timeout: float, quiet: bool = False) -> dict:
    deadline, last = time.monotonic() + timeout, None
    while True:
        body = http.get(path).raise_for_status().json()
        step = body.get("progress", {}).get("step")
        if not quiet and step != last:
            p = body["progress"]
            loss = f"{p['loss']:.4f}" if p["loss"] is not None else "-"
            print(f"  {label}: step {p['step']}/{p['total_steps']}  loss {loss}", flush=True)
            last = step
        if body["status"] in ("succeeded", "failed", "canceled"):
            if body["status"] != "succeeded":
                raise RuntimeError(f"{label} {body['status']}: {body.get('error')}")
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label} not done after {timeout:.0f} s: {body['status']}")
        time.sleep(0.5)


def seconds(job: dict) -> float:
    """Start to end of a job, as the service recorded it."""
    start, end = (datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at"))
    return (end - start).total_seconds()


def generate_all(http: httpx.Client, requests: list[dict], window: int = 8) -> list[Image.Image]:
    """Keep `window` generations queued (the worker batches compatible ones; an owner may have 10 active), and
    collect the images in the order of `requests`."""
    ids: list[str] = []
    images: list[Image.Image] = []
    while len(images) < len(requests):
        while len(ids) < len(requests) and len(ids) - len(images) < window:
            r = http.post("/v1/generations", json=requests[len(ids)])
            if r.status_code != 202:
                raise RuntimeError(f"generation refused: {r.text}")
            ids.append(r.json()["id"])
        done = wait_done(http, f"/v1/generations/{ids[len(images)]}", "generation", timeout=1800, quiet=True)
        png = http.get(done["images"][0]["url"]).raise_for_status().content
        images.append(Image.open(io.BytesIO(png)).convert("RGB"))
    return images


def score(columns: dict[str, list[Image.Image]], labels: list[dict]) -> dict[str, dict[str, float]]:
    from core.synth.evaluate import evaluate

    keys = (STYLE_KEY,) + FOLLOW_KEYS + ("shape_acc", "extra_regions")
    out = {}
    for name, images in columns.items():
        ev = evaluate(list(zip(images, labels)))
        out[name] = {k: round(ev[f"mean_{k}"], 3) for k in keys}
    return out


def targets(scores: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Issue 13's three targets: measured value, bound, met."""
    base, base_t, lora_t, lora = (scores[c] for c in COLUMNS)
    gain = lora_t[STYLE_KEY] - base_t[STYLE_KEY]
    leak = lora[STYLE_KEY] - base[STYLE_KEY]
    drop = max(base[k] - lora_t[k] for k in FOLLOW_KEYS)
    return {
        "style_gain_with_trigger": {
            "value": round(gain, 3),
            "bound": f">= {STYLE_GAIN_MIN}",
            "met": gain >= STYLE_GAIN_MIN,
        },
        "style_change_without_trigger": {
            "value": round(leak, 3),
            "bound": f"<= {LEAK_MAX}",
            "met": leak <= LEAK_MAX,
        },
        "following_drop_with_trigger": {
            "value": round(drop, 3),
            "bound": f"<= {FOLLOW_TOLERANCE}",
            "met": drop <= FOLLOW_TOLERANCE,
        },
    }


def score_lines(scores: dict, met: dict, train_s: float, n: int) -> list[list[str]]:
    """The footer: a table (one row per column of the grid), then the training time and the targets."""
    lines = [
        [f"means over {n} held-out prompts (core.synth)", "shading", "background", "region", "colour"],
        *([name, *(f"{s[k]:.2f}" for k in (STYLE_KEY, *FOLLOW_KEYS))] for name, s in scores.items()),
        [f"training through the service: {train_s:.0f} s"],
    ]
    for k, v in met.items():
        verdict = "met" if v["met"] else "MISSED"
        lines.append([f"{k.replace('_', ' ')}: {v['value']:+.2f} (target {v['bound']}: {verdict})"])
    return lines


def grid(
    rows: list[tuple[str, list[Image.Image]]], size: int, footer: list[list[str]], zoom: int = 2
) -> Image.Image:
    """Rows of (prompt, one image per column) under the column titles, each image enlarged `zoom` times (pixel
    for pixel, so the contours stay crisp), the prompt under each row, the footer's cells at fixed tab stops."""
    pad, text_h, side, tab = 8, 14, size * zoom, (0, 260, 330, 410, 470)
    width = max(len(COLUMNS) * (side + pad) + pad, 560)
    height = text_h + pad + len(rows) * (side + text_h + pad) + len(footer) * text_h + 2 * pad
    out = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(out)
    for c, title in enumerate(COLUMNS):
        d.text((pad + c * (side + pad), 2), title, fill="black")
    y = text_h + pad
    for text, images in rows:
        for c, img in enumerate(images):
            out.paste(img.resize((side, side), Image.Resampling.NEAREST), (pad + c * (side + pad), y))
        d.text((pad, y + side + 1), text[: width // 6], fill="black")
        y += side + text_h + pad
    for cells in footer:
        for x, cell in zip(tab, cells):
            d.text((pad + x, y), cell, fill="black")
        y += text_h
    return out


def run(args: argparse.Namespace) -> dict:
    """The whole demo; returns what it wrote to scores.json."""
    from core.synth import sample_scene
    from core.synth.cli import write_dataset

    out = Path(args.out).resolve()
    data_dir = out / "data"
    # A demo starts from nothing, like a fresh machine: only its own files are removed, never --out itself.
    shutil.rmtree(data_dir, ignore_errors=True)
    (out / f"{STYLE}.zip").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    bundled = (BUNDLED / "config.json").is_file()
    model = BUNDLED if bundled else out / "no-bundled-model"
    # The API refuses images under 256 px on a side; the trainer scales them to the preset's resolution.
    dataset = write_dataset(
        out / STYLE, n=args.images, size=256, seed=7, style=STYLE, trigger=TRIGGER, trigger_at=TRIGGER_AT,
        two_shape_prob=0.3, as_zip=True, reg=args.images * args.reg_ratio, reg_paired=True,
    )  # fmt: skip
    scenes = [sample_scene(EVAL_STREAM, i, two_shape_prob=0.0) for i in range(args.prompts)]
    port = free_port()
    proc, key = start_service(data_dir, model, port)
    try:
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=120
        )
        print(f"service up at http://127.0.0.1:{port} on {model.name}; uploading {dataset.name}", flush=True)
        default = [n for n, p in http.get("/v1/training-presets").json().items() if p["default"]]
        print(f"the service's default training preset: {default[0] if default else 'none'}", flush=True)
        r = http.post(
            "/v1/datasets",
            files=[("files", (dataset.name, dataset.read_bytes(), "application/zip"))],
            data={"name": f"{STYLE} shapes"},
        )
        if r.status_code != 201:
            raise RuntimeError(f"upload refused: {r.text}")
        request = {"dataset_id": r.json()["id"], "trigger": TRIGGER, "sample_prompts": [prompt(scenes[0], True)]}
        if not bundled:  # the fallback random model has no default preset; the recipe for it is still this one
            request["preset"] = "bundled"
        if args.steps:  # smoke runs
            request.update(steps=args.steps, sample_every=0)
        job = http.post("/v1/trainings", json=request).raise_for_status().json()
        p = job["params"]
        print(
            f"training {job['id']}: preset {p['preset']}, {p['steps']} steps, {p['resolution']} px, rank "
            f"{p['rank']}, lr {p['learning_rate']}, batch {p['batch_size']}",
            flush=True,
        )
        job = wait_done(http, f"/v1/trainings/{job['id']}", "training", timeout=24 * 3600)
        train_s = seconds(job)
        size = job["params"]["resolution"]
        lora = [{"id": job["lora_id"], "scale": 1.0}]
        # steps and CFG left to the service unless given: on the bundled model its own (api.request_defaults)
        common = {"width": size, "height": size}
        common.update({k: v for k, v in (("steps", args.gen_steps), ("guidance", args.guidance)) if v is not None})
        plan = [(False, []), (True, []), (True, lora), (False, lora)]  # COLUMNS, in order
        requests = [
            {"prompt": prompt(s, trig), "loras": loras, "seed": i, **common}
            for trig, loras in plan
            for i, s in enumerate(scenes)
        ]
        print(f"generating {len(requests)} images ({len(scenes)} held-out prompts x {len(COLUMNS)})", flush=True)
        images = generate_all(http, requests)
    finally:
        stop_service(proc)
    n = len(scenes)
    columns = {name: images[c * n : (c + 1) * n] for c, name in enumerate(COLUMNS)}
    scores = score(columns, [s.labels() for s in scenes])
    met = targets(scores)
    footer = score_lines(scores, met, train_s, n)
    rows = [(prompt(s, False), [columns[c][i] for c in COLUMNS]) for i, s in enumerate(scenes[: args.show])]
    path = out / "grid.png"
    grid(rows, size, footer, zoom=max(1, 256 // size)).save(path)  # shown at least 256 px a side
    result = {
        "training": {"id": job["id"], "seconds": round(train_s, 1), "params": job["params"]},
        "prompts": n,
        "scores": scores,
        "targets": met,
    }
    (out / "scores.json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n" + "\n".join("  ".join(cells) for cells in footer) + f"\nwrote {path} and {out / 'scores.json'}")
    return result


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ops.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "demo"))
    ap.add_argument("--images", type=int, default=24, help=f"{STYLE} images")
    # None by default: the service's bundled preset draws prior images (the base model's own, of each caption without
    # the trigger), which gated the style better than rendered plain twins (docs/evidence.md section 5).
    ap.add_argument(
        "--reg-ratio",
        type=int,
        default=0,
        help="rendered plain reg/ images (without the trigger) per styled image, the first of them the styled "
        "scenes drawn plain (default 0: the service's prior images instead)",
    )
    ap.add_argument("--steps", type=int, default=0, help="training steps (default: the preset's); smoke runs")
    ap.add_argument("--prompts", type=int, default=16, help="held-out prompts generated and scored")
    ap.add_argument("--show", type=int, default=4, help="of which the grid shows the first")
    ap.add_argument("--gen-steps", type=int, help="sampler steps per image (default: the service's, 20)")
    ap.add_argument("--guidance", type=float, help="CFG scale (default: the service's, 2 on the bundled model)")
    return ap


def main(argv: list[str] | None = None) -> int:
    run(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
