"""Write a synthetic dataset folder (or .zip) that the trainer and the API accept.

    python -m core.synth --out runs/shapes --n 200 --size 128
    python -m core.synth --out runs/hatched --n 200 --size 128 --style hatched --trigger "hatchwork style" --zip

Each image NNNNNN.png gets NNNNNN.txt (its caption) and a line in metadata.jsonl with the same caption and
its structured labels (shape, colour, size, region per shape; background), for prompt-following checks.
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path

from core.atomic_files import atomic_dir, atomic_file

from .render import STYLES, render
from .scene import TRIGGER_AT, sample_scene
from .vocab import CORNERS_AND_CENTRE, REGIONS

REG_DIR = "reg/"  # core.data's regularisation folder: its images train without the trigger


def _files(
    n: int,
    size: int,
    seed: int,
    style: str,
    trigger: str,
    two_shape_prob: float,
    regions,
    reg: int = 0,
    at="start",
    reg_paired: bool = False,
):
    """(name, bytes) for every file of the dataset, metadata.jsonl last. `reg` plain scenes go under reg/,
    captioned without any trigger: the trainer leaves their captions alone. They come from another seed stream,
    or with `reg_paired` the first n are the styled scenes themselves, drawn plain: pairs that differ only in
    the style and the trigger."""
    meta = []
    items = [("", i, style, trigger, seed) for i in range(n)]
    items += [(REG_DIR, i, "plain", "", seed if reg_paired and i < n else seed + 100_000) for i in range(reg)]
    for folder, i, sty, trig, stream in items:
        scene = sample_scene(stream, i, two_shape_prob, regions)
        buf = io.BytesIO()
        render(scene, size, sty).save(buf, format="PNG", compress_level=1)
        caption = scene.caption(trig, at)
        yield f"{folder}{i:06d}.png", buf.getvalue()
        yield f"{folder}{i:06d}.txt", caption.encode()
        meta.append(json.dumps({"file_name": f"{folder}{i:06d}.png", "text": caption, "labels": scene.labels()}))
    yield "metadata.jsonl", ("\n".join(meta) + "\n").encode()


def write_dataset(
    out: str | Path,
    n: int,
    size: int = 128,
    seed: int = 0,
    style: str = "plain",
    trigger: str = "",
    two_shape_prob: float = 0.5,
    regions=tuple(REGIONS),
    as_zip: bool = False,
    reg: int = 0,
    trigger_at: str = "start",
    reg_paired: bool = False,
) -> Path:
    """Write the dataset atomically (a temp sibling renamed into place); returns the folder or .zip path."""
    out = Path(out)
    if as_zip and out.suffix != ".zip":
        out = out.with_name(out.name + ".zip")
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    if trigger_at not in TRIGGER_AT:
        raise ValueError(f"trigger_at must be one of {TRIGGER_AT}, got {trigger_at!r}")
    files = _files(n, size, seed, style, trigger, two_shape_prob, regions, reg, trigger_at, reg_paired)
    if as_zip:
        # 0644: others (the API, a worker) read datasets
        with atomic_file(out, mode=0o644) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for name, data in files:
                # A fixed timestamp makes the archive a function of the arguments alone (reproducible).
                zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    else:
        with atomic_dir(out, mode=0o755) as tmp:
            for name, data in files:
                (tmp / name).parent.mkdir(exist_ok=True)
                (tmp / name).write_bytes(data)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m core.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to create (or .zip with --zip)")
    p.add_argument("--n", type=int, default=200, help="number of images")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (a multiple of 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", choices=STYLES, default="plain")
    p.add_argument("--trigger", default="", help="phrase put in every caption (see --trigger-at)")
    p.add_argument(
        "--trigger-at",
        choices=TRIGGER_AT,
        default="start",
        help="where the trigger goes: start (the usual convention) or end (what the bundled model keeps placement "
        "with: docs/evidence.md section 4)",
    )
    p.add_argument("--two-shape-prob", type=float, default=0.5, help="chance that a scene has two shapes")
    p.add_argument("--corners-only", action="store_true", help="use 4 corners + centre instead of the 3x3 grid")
    p.add_argument("--zip", action="store_true", help="write one .zip instead of a folder")
    p.add_argument(
        "--reg",
        type=int,
        default=None,
        help="plain regularisation scenes under reg/ (trained without the trigger, so the LoRA stays "
        "off without it); default: as many as --n for a styled set, 0 for a plain one",
    )
    a = p.parse_args(argv)
    if a.n < 1:
        p.error("--n must be >= 1")
    if a.size < 32 or a.size % 32:
        p.error("--size must be a multiple of 32 (the model's patch size), e.g. 128 or 256")
    if not 0 <= a.two_shape_prob <= 1:
        p.error("--two-shape-prob must be in [0, 1]")
    regions = CORNERS_AND_CENTRE if a.corners_only else tuple(REGIONS)
    reg = a.reg if a.reg is not None else (a.n if a.style != "plain" else 0)
    if reg < 0:
        p.error("--reg must be >= 0")
    try:
        path = write_dataset(
            a.out, a.n, a.size, a.seed, a.style, a.trigger, a.two_shape_prob, regions, a.zip, reg, a.trigger_at
        )
    except FileExistsError as e:
        p.error(str(e))
    print(
        f"wrote {a.n} images"
        + (f" and {reg} plain regularisation images under {REG_DIR}" if reg else "")
        + f" to {path}"
    )
