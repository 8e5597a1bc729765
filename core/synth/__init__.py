"""Procedural, captioned shape scenes (no downloads), plain or in the "hatched" LoRA style, and their measures.

from core.synth import sample_scene, render, SynthDataset, style_score, prompt_following

scene = sample_scene(seed=0, index=5)          # one or two shapes in a 3x3 grid on a light background
img = render(scene, size=128, style="hatched") # PIL RGB
scene.caption("hatchwork style")               # "hatchwork style, a large blue star in the centre on a ..."
style_score(img)                               # ~1 hatched, ~0 plain
prompt_following(img, scene)["score"]          # 1.0 on the render itself

python -m core.synth --out runs/shapes --n 200 --size 128 [--style hatched --trigger "..."] [--zip]
"""

from .measure import prompt_following, style_features, style_score
from .render import STYLES, render
from .scene import Scene, ShapeSpec, sample_scene
from .vocab import BACKGROUNDS, COLOURS, REGIONS, SHAPES, SIZES

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "REGIONS",
    "SHAPES",
    "SIZES",
    "STYLES",
    "Scene",
    "ShapeSpec",
    "SynthDataset",
    "prompt_following",
    "render",
    "sample_scene",
    "style_features",
    "style_score",
]


def __getattr__(name):
    # SynthDataset needs torch; the CLI and the measures do not, so torch is imported only when asked for.
    if name == "SynthDataset":
        from .dataset import SynthDataset

        return SynthDataset
    raise AttributeError(f"module 'core.synth' has no attribute {name!r}")
