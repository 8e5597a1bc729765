"""Edit pairs of the shape world: a scene (the reference) and the same scene with its shape recoloured (the
target), for training and scoring instruction-editing LoRAs such as "make the shape blue".

    scenes = edit_scenes(seed=5, n=24, colour="blue")          # single-shape scenes whose shape is not blue
    folder = write_edit_pairs("runs/blue", scenes, colour="blue", size=128)   # in-k.png, out-k.png, metadata.jsonl
    edit_score(generated_image, scene, colour="blue")         # {"colour_ok", "kept", "score", ...}

The dataset is in the edit-dataset convention core.data reads: metadata.jsonl lines
{"file": "out-k.png", "text": INSTRUCTION, "references": ["in-k.png"]}.
The score asks two things of an edited image: the shape now has the asked colour (colour_ok), and the rest of
the scene was kept: the same background, a shape in the same cell of the same class, nothing added (kept).
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

from .measure import prompt_following
from .render import render
from .scene import Scene, sample_scene
from .vocab import BACKGROUNDS, REGIONS


def instruction(colour: str) -> str:
    return f"make the shape {colour}"


def edit_scenes(seed: int, n: int, colour: str) -> list[Scene]:
    """The first n single-shape scenes of stream `seed` whose shape is not already `colour`."""
    out, i = [], 0
    while len(out) < n:
        scene = sample_scene(seed, i, two_shape_prob=0.0)
        i += 1
        if scene.shapes[0].colour != colour:
            out.append(scene)
    return out


def recoloured(scene: Scene, colour: str) -> Scene:
    return replace(scene, shapes=tuple(replace(s, colour=colour) for s in scene.shapes))


# The edits the bundled model is pretrained on, so that it reads a reference image (copy, recolour the
# background, move the shape). Recolouring the shape is left out on purpose: it is the task an edit LoRA is
# measured on, so the base must not already know it.
PRETRAINING_EDITS = ("keep", "background", "move")


def pretraining_instructions() -> list[str]:
    """Every instruction pretraining_edit can give (the pretraining batch lays each one out once)."""
    return (
        ["keep the picture"]
        + [f"change the background to {b}" for b in BACKGROUNDS]
        + [f"move the shape to the {r}" for r in REGIONS]
    )


def pretraining_edit(seed: int, index: int) -> tuple[Scene, Scene, str]:
    """Edit number `index` of stream `seed`: (reference scene, target scene, instruction), one of
    PRETRAINING_EDITS: the same in any process."""
    rng = random.Random(f"o1lora-edit:{seed}:{index}")
    kind = rng.choice(PRETRAINING_EDITS)
    scene = sample_scene(seed, index, two_shape_prob=0.0 if kind == "move" else 0.5)
    if kind == "keep":
        return scene, scene, "keep the picture"
    if kind == "background":
        bg = rng.choice([b for b in BACKGROUNDS if b != scene.background])
        return scene, replace(scene, background=bg), f"change the background to {bg}"
    [shape] = scene.shapes
    region = rng.choice([r for r in REGIONS if r != shape.region])
    return scene, replace(scene, shapes=(replace(shape, region=region),)), f"move the shape to the {region}"


def write_edit_pairs(
    out: str | Path, scenes: list[Scene], colour: str, size: int = 128, *, target=None, text: str | None = None
) -> Path:
    """Each scene as a reference (in-k.png) and its target (out-k.png): the scene recoloured to `colour`, or
    target(scene) when given; with the instruction `text` (default: instruction(colour))."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = target or (lambda scene: recoloured(scene, colour))
    text = instruction(colour) if text is None else text
    lines = []
    for k, scene in enumerate(scenes):
        render(scene, size).save(out / f"in-{k}.png")
        render(target(scene), size).save(out / f"out-{k}.png")
        lines.append(json.dumps({"file": f"out-{k}.png", "text": text, "references": [f"in-{k}.png"]}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return out


def edit_score(img, scene: Scene, colour: str) -> dict:
    """How well `img` is `scene` with its shape recoloured to `colour` (see the module docstring)."""
    m = prompt_following(img, recoloured(scene, colour))
    [shape] = m["shapes"]
    kept = bool(
        m["background"]["found"] == m["background"]["expected"]
        and shape["present"]
        and shape["shape_ok"]
        and not m["extra_regions"]
    )
    colour_ok = bool(shape["present"] and shape["colour_ok"])
    return {
        "colour_ok": colour_ok,
        "kept": kept,
        "score": (colour_ok + kept) / 2,
        "found": shape["found"],
        "background": m["background"]["found"],
        "extra_regions": m["extra_regions"],
    }
