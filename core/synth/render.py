"""Drawing scenes with PIL: "plain" (flat anti-aliased shapes), "hatched" (diagonal black hatching inside the
shapes and thin black outlines), "outlined" (a bold black contour around each shape, the colour inside it
untouched) or "shaded" (each shape lit from above: its colour fades to SHADE of its brightness at the bottom,
the hue unchanged), same palette, same layout. Hatching is finer than the bundled model's 32-px patches can
draw at 128 px; a bold contour is not, but it is a thin high-frequency detail, where shading changes every pixel
of a shape smoothly.

    img = render(scene, size=128, style="hatched")   # PIL RGB, about 1 ms at 128 px

Anti-aliasing by drawing at 2x and box-reducing; the hatching is a 45-degree stripe mask multiplied into
each shape's mask, so it stays cheap enough for ~100k images during a pretraining run.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from .scene import Scene, ShapeSpec
from .vocab import BACKGROUNDS, COLOURS, INK, REGIONS, SIZES

STYLES = ("plain", "hatched", "outlined", "shaded")
SHADE = 0.45  # "shaded": brightness at the bottom of a shape relative to its top
OUTLINE = 0.22  # "outlined": the ink contour's width as a fraction of the radius (~4 px on a large shape at 128)
MARGIN = 0.012  # gap kept between a shape and its cell's border, as a fraction of the side


def centre_and_radius(spec: ShapeSpec, side: float) -> tuple[float, float, float]:
    col, row = REGIONS[spec.region]
    r = SIZES[spec.size]
    room = max(0.0, 1 / 6 - r - MARGIN)  # how far the centre may move and keep the shape in its cell
    return ((col + 0.5) / 3 + spec.dx * room) * side, ((row + 0.5) / 3 + spec.dy * room) * side, r * side


def primitives(shape: str, cx: float, cy: float, r: float) -> list[tuple[str, object, bool]]:
    """(kind, coordinates, is_hole) in pixels; kind is 'ellipse' (a box) or 'polygon' (points)."""

    def poly(points):
        return [("polygon", [(cx + x * r, cy + y * r) for x, y in points], False)]

    if shape == "circle":
        return [("ellipse", (cx - r, cy - r, cx + r, cy + r), False)]
    if shape == "ring":
        q = 0.55 * r
        return [
            ("ellipse", (cx - r, cy - r, cx + r, cy + r), False),
            ("ellipse", (cx - q, cy - q, cx + q, cy + q), True),
        ]
    if shape == "square":
        a = 0.85
        return poly([(-a, -a), (a, -a), (a, a), (-a, a)])
    if shape == "triangle":  # equilateral, pointing up, its box centred on (cx, cy)
        return poly([(math.cos(t), math.sin(t) + 0.25) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])
    if shape == "star":  # five points, inner radius 0.45
        pts = []
        for k in range(10):
            t = -math.pi / 2 + k * math.pi / 5
            rad = 1.0 if k % 2 == 0 else 0.45
            pts.append((rad * math.cos(t), rad * math.sin(t) + 0.095))
        return poly(pts)
    if shape == "cross":  # a plus sign with arms a third of its width
        a, b = 1.0, 0.33
        return poly(
            [
                (-b, -a),
                (b, -a),
                (b, -b),
                (a, -b),
                (a, b),
                (b, b),
                (b, a),
                (-b, a),
                (-b, b),
                (-a, b),
                (-a, -b),
                (-b, -b),
            ]
        )
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, size: tuple[int, int], cx: float, cy: float, r: float) -> Image.Image:
    """255 inside the shape, 0 outside, on a canvas of `size` (width, height)."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for kind, xy, hole in primitives(shape, cx, cy, r):
        getattr(draw, kind)(xy, fill=0 if hole else 255)
    return mask


@lru_cache(maxsize=16)
def _stripes(side: int, period: int) -> Image.Image:
    """255 on 45-degree ink lines (about 40% of each period), 0 between."""
    y, x = np.mgrid[0:side, 0:side]
    return Image.fromarray(np.where((x + y) % period < max(1, round(0.4 * period)), 255, 0).astype(np.uint8))


def _contour(img: Image.Image, shape: str, cx: float, cy: float, r: float, width: int) -> None:
    draw = ImageDraw.Draw(img)
    for kind, xy, hole in primitives(shape, cx, cy, r):
        if hole:  # PIL draws outlines inside the box; a hole's outline belongs on the material around it
            xy = (xy[0] - width, xy[1] - width, xy[2] + width, xy[3] + width)
        getattr(draw, kind)(xy, outline=INK, width=width)


def _shaded_fill(colour: tuple[int, int, int], w: int, h: int, cy: float, r: float) -> Image.Image:
    """The colour scaled from 1 at the shape's top (cy - r) to SHADE at its bottom (cy + r), row by row: a
    multiple of the colour keeps its chromaticity, so its name (measure.dominant_colour) stays the same."""
    t = np.clip((np.arange(h, dtype=np.float32) + 0.5 - (cy - r)) / (2 * r), 0.0, 1.0)
    rows = 1.0 - (1.0 - SHADE) * t  # [h]
    fill = rows[:, None, None] * np.asarray(colour, dtype=np.float32)[None, None, :]
    return Image.fromarray(np.repeat(fill, w, axis=1).round().astype(np.uint8))


def render(scene: Scene, size: int = 128, style: str = "plain", supersample: int = 2) -> Image.Image:
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; one of {STYLES}")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    side = size * supersample
    img = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    for spec in scene.shapes:
        cx, cy, r = centre_and_radius(spec, side)
        # Work in the shape's box only: full-canvas masks cost 5x more at 256 px.
        x0, y0 = max(0, int(cx - r) - 2), max(0, int(cy - r) - 2)
        x1, y1 = min(side, int(cx + r) + 3), min(side, int(cy + r) + 3)
        box = (x0, y0, x1, y1)
        mask = shape_mask(spec.shape, (x1 - x0, y1 - y0), cx - x0, cy - y0, r)
        if style == "shaded":
            img.paste(_shaded_fill(COLOURS[spec.colour], x1 - x0, y1 - y0, cy - y0, r), box, mask)
        else:
            img.paste(COLOURS[spec.colour], box, mask)
        if style == "outlined":
            _contour(img, spec.shape, cx, cy, r, max(2, round(OUTLINE * r)))
        if style == "hatched":
            period = max(4, round(size / 20)) * supersample  # ~6 px at 128: visible after generation
            img.paste(INK, box, ImageChops.multiply(mask, _stripes(side, period).crop(box)))
            # ~3 px on a large shape at 128 px, 2 px on a small one: thick, yet leaves the colour readable.
            width = max(2, round(0.16 * r))
            draw = ImageDraw.Draw(img)
            for kind, xy, hole in primitives(spec.shape, cx, cy, r):
                if hole:  # PIL draws outlines inside the box; a hole's outline belongs on the material around it
                    xy = (xy[0] - width, xy[1] - width, xy[2] + width, xy[3] + width)
                getattr(draw, kind)(xy, outline=INK, width=width)
    return img.reduce(supersample) if supersample > 1 else img
