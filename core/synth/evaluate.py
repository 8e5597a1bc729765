"""Score images of shape scenes (generated or rendered): style scores (hatched, outlined, shaded) and prompt following.

    python -m core.synth.evaluate DIR [--per-image]   # DIR/metadata.jsonl: {"file_name", "text" and/or "labels"}
    summary = evaluate([(pil_image, caption_or_labels), ...])

A folder written by `python -m core.synth` already has that metadata.jsonl; for generated images, save each
one under a file_name and list it with the prompt it was generated from (labels are parsed from the text).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .measure import prompt_following, style_score
from .outline import outline_score
from .scene import parse_caption
from .shading import shading_score
from .speckle import speckle


def size_accuracy(rows: list[dict], size: str) -> float | None:
    """The small-shape (or large-shape) measure: shapes of that size drawn as the right class, over all
    images (None when there are none). Small shapes (~23 px across at 128 px) are what a weak model blurs."""
    hits = [ok for r in rows for ok, sz in zip(r["shape_ok"], r["sizes"]) if sz == size]
    return sum(hits) / len(hits) if hits else None


def evaluate(pairs) -> dict:
    """pairs: (image, caption str or labels dict). Returns means and one row per image."""
    rows = []
    for img, prompt in pairs:
        labels = parse_caption(prompt) if isinstance(prompt, str) else prompt
        m = prompt_following(img, labels)
        rows.append(
            {
                "style_score": style_score(img),
                "outline_score": outline_score(img),
                "shading_score": shading_score(img),
                "follow_score": m["score"],
                "region_acc": m["region_acc"],
                "colour_acc": m["colour_acc"],
                "shape_acc": m["shape_acc"],
                "background_ok": m["background"]["found"] == m["background"]["expected"],
                "extra_regions": len(m["extra_regions"]),
                "speckle": speckle(img, labels),
                "sizes": [sh["expected"]["size"] for sh in m["shapes"]],
                "shape_ok": [sh["shape_ok"] for sh in m["shapes"]],
            }
        )
    if not rows:
        raise ValueError("nothing to evaluate: no images given")
    keys = (
        "style_score",
        "outline_score",
        "shading_score",
        "follow_score",
        "region_acc",
        "colour_acc",
        "shape_acc",
        "background_ok",
        "extra_regions",
        "speckle",
    )
    return {
        "n": len(rows),
        **{f"mean_{k}": float(np.mean([r[k] for r in rows])) for k in keys},
        "small_shape_acc": size_accuracy(rows, "small"),
        "large_shape_acc": size_accuracy(rows, "large"),
        "rows": rows,
    }


def evaluate_folder(folder: str | Path) -> dict:
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise FileNotFoundError(f'{meta} not found: list each image as {{"file_name": ..., "text": ...}}')
    pairs, names = [], []
    for lineno, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "file_name" not in row or not ("labels" in row or "text" in row):
            raise ValueError(f'{meta} line {lineno}: needs "file_name" and "text" or "labels"')
        with Image.open(folder / row["file_name"]) as im:
            pairs.append((im.convert("RGB"), row.get("labels") or row["text"]))
        names.append(row["file_name"])
    out = evaluate(pairs)
    for name, r in zip(names, out["rows"]):
        r["file_name"] = name
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m core.synth.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--per-image", action="store_true", help="also print one row per image")
    a = p.parse_args(argv)
    out = evaluate_folder(a.folder)
    if not a.per_image:
        out.pop("rows")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
