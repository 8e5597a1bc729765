"""A scene: one or two shapes and a background, drawn deterministically from a seed, and its caption.

scene = sample_scene(seed=0, index=17, two_shape_prob=0.5)
scene.caption()          # "a small red circle in the top left on a light blue background"
scene.caption("sks")     # "sks, a small red circle ..."
scene.labels()           # {"background": "light blue", "shapes": [{"shape", "colour", "size", "region"}]}
parse_caption("sks, a small red circle in the top left on a light blue background") == scene.labels()
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass

from .vocab import BACKGROUNDS, COLOURS, REGION_PHRASES, REGIONS, SHAPES, SIZES


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    size: str
    region: str
    dx: float = 0.0  # offset of the centre from the cell centre, as a fraction of the free room (-1..1)
    dy: float = 0.0

    def __post_init__(self):
        for field, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, COLOURS),
            ("size", self.size, SIZES),
            ("region", self.region, REGIONS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {field} {value!r}; one of {sorted(allowed)}")

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {REGION_PHRASES[self.region]}"


TRIGGER_AT = ("start", "end")  # where Scene.caption puts a trigger phrase


@dataclass(frozen=True)
class Scene:
    shapes: tuple[ShapeSpec, ...]
    background: str

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; one of {sorted(BACKGROUNDS)}")
        regions = [s.region for s in self.shapes]
        if not regions or len(set(regions)) != len(regions):
            raise ValueError(f"a scene needs one or more shapes in distinct regions, got {regions}")

    def caption(self, trigger: str = "", at: str = "start") -> str:
        """The scene in prose, with `trigger` in front (at="start", the usual LoRA convention) or after it
        (at="end": the bundled model reads a scene sentence by token position, so a phrase in front of it
        moves the shapes until a LoRA relearns placement; one after it leaves the sentence as pretrained)."""
        if at not in TRIGGER_AT:
            raise ValueError(f"at must be one of {TRIGGER_AT}, got {at!r}")
        text = " and ".join(s.phrase() for s in self.shapes)
        text += ("," if len(self.shapes) > 1 else "") + f" on a {self.background} background"
        trigger = " ".join(trigger.split())
        if not trigger:
            return text
        return f"{trigger}, {text}" if at == "start" else f"{text}, {trigger}"

    def labels(self) -> dict:
        return {
            "background": self.background,
            "shapes": [{k: v for k, v in asdict(s).items() if k not in ("dx", "dy")} for s in self.shapes],
        }


def sample_scene(
    seed: int, index: int, two_shape_prob: float = 0.5, regions: tuple[str, ...] = tuple(REGIONS)
) -> Scene:
    """Scene number `index` of the stream `seed`: the same pair always gives the same scene, in any process."""
    rng = random.Random(f"o1lora-synth:{seed}:{index}")  # str seeds hash with SHA-512: stable across runs
    n = 2 if rng.random() < two_shape_prob and len(regions) > 1 else 1
    where = rng.sample(list(regions), n)
    colours = rng.sample(list(COLOURS), n)  # two shapes never share a colour: the caption tells them apart
    shapes = tuple(
        ShapeSpec(
            shape=rng.choice(SHAPES),
            colour=c,
            size=rng.choice(list(SIZES)),
            region=r,
            dx=rng.uniform(-1, 1),
            dy=rng.uniform(-1, 1),
        )
        for c, r in zip(colours, where)
    )
    return Scene(shapes=shapes, background=rng.choice(list(BACKGROUNDS)))


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_PHRASE_TO_REGION = {v: k for k, v in REGION_PHRASES.items()}
_SHAPE_RE = re.compile(
    rf"\ba ({_alternatives(SIZES)}) ({_alternatives(COLOURS)}) ({_alternatives(SHAPES)}) "
    rf"({_alternatives(_PHRASE_TO_REGION)})(?= and |,? on a )"
)
_BACKGROUND_RE = re.compile(rf",? on a ({_alternatives(BACKGROUNDS)}) background\s*(?:,[^,]*)?$")  # trigger after


def parse_caption(caption: str) -> dict:
    """Labels back from a caption of this grammar (a trigger before it or, after a comma, behind it), so a prompt
    alone can be scored."""
    bg = _BACKGROUND_RE.search(caption)
    shapes = [
        {"shape": m[3], "colour": m[2], "size": m[1], "region": _PHRASE_TO_REGION[m[4]]}
        for m in _SHAPE_RE.finditer(caption)
    ]
    if bg is None or not shapes:
        raise ValueError(
            f'not a shape-scene caption ("a <size> <colour> <shape> <where> ... on a <background> '
            f'background"): {caption!r}'
        )
    return {"background": bg[1], "shapes": shapes}
