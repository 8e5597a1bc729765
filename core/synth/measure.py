"""Measuring images of the shape world: how "hatched" an image looks, and whether it follows its prompt.

    style_score(img)                 # 0 (flat shapes) .. 1 (black outlines + hatching); works at 128 px
    m = prompt_following(img, scene) # per stated shape: is something there, its colour, its shape class
    m["score"]                       # fraction of checks passed (region, colour, shape per shape; background)

Everything is plain numpy on the image as given (generated or rendered): the background is the median of
the border, a region's foreground is what differs from it, the colour is the majority vote of the
foreground's chromatic pixels over the named palette, the shape class is the nearest template (IoU of the
foreground's box-normalised silhouette against silhouettes of the six shapes).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from .render import shape_mask
from .scene import Scene
from .vocab import BACKGROUNDS, COLOURS, REGIONS, SHAPES

FG_DISTANCE = 60.0  # RGB distance from the background that counts as foreground (light vs saturated: >100)
MIN_FG_FRACTION = 0.03  # of a cell; a small star covers ~8%, generation noise a fraction of a percent
TEMPLATE = 32  # side of the silhouettes compared
INK_FULL = 0.4  # ink share at which the score's ink part is full (hatched renders: 0.4-0.8; flat: 0)
ENERGY_FULL = 0.1  # texture at which its texture part is full (hatched renders: 0.04-0.4; flat: 0)


def _array(img: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {arr.shape}")
    return arr


def background_colour(arr: np.ndarray) -> np.ndarray:
    """Median of a 2-px frame: shapes stay inside their cells, so the border is background."""
    frame = np.concatenate(
        [arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3), arr[:, :2].reshape(-1, 3), arr[:, -2:].reshape(-1, 3)]
    )
    return np.median(frame, axis=0)


def foreground(arr: np.ndarray, bg: np.ndarray) -> np.ndarray:
    return np.linalg.norm(arr - bg, axis=-1) > FG_DISTANCE


def _dark(arr: np.ndarray) -> np.ndarray:
    return arr.max(axis=-1) < 100  # ink (or blurred ink); every palette colour has a channel above 145


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            out &= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def style_features(img) -> dict[str, float]:
    """ink_share: ink pixels / foreground pixels (outlines and hatch lines). hatch_energy: inside the shapes,
    how much more the grey level changes across the 45-degree hatch lines than along them (pixel noise
    adds to both alike and cancels; edges are kept out by a 2-px erosion). Both are 0 for flat shapes."""
    arr = _array(img)
    bg = background_colour(arr)
    fg = foreground(arr, bg)
    gray = arr.mean(axis=-1) / 255.0
    inside = _erode(fg, 2)[1:-1, 1:-1]
    g = gray[1:-1, 1:-1]
    across = np.abs(gray[2:, 2:] - g)  # step along (1, 1): crosses the lines x + y = const
    along = np.abs(gray[:-2, 2:] - g)  # step along (1, -1): follows them
    # Squared steps: independent noise adds the same expected power to both, so the difference is unbiased.
    power = float((across[inside] ** 2 - along[inside] ** 2).mean()) if inside.any() else 0.0
    return {
        "ink_share": float((_dark(arr) & fg).sum() / max(1, fg.sum())),
        "hatch_energy": float(np.sqrt(max(0.0, power))),
    }


def style_score(img) -> float:
    """0..1: mostly the ink share of the shapes (full at INK_FULL), a quarter the texture inside them (full
    at ENERGY_FULL). Flat renders score < 0.1, hatched ones > 0.7 (measured in tests/core/test_synth.py)."""
    f = style_features(img)
    return 0.75 * min(1.0, f["ink_share"] / INK_FULL) + 0.25 * min(1.0, f["hatch_energy"] / ENERGY_FULL)


def _silhouette(mask: np.ndarray) -> np.ndarray | None:
    """Crop to the mask's box, centre in a square, resize to TEMPLATE: position and scale no longer matter."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    side = max(h, w)
    sq = np.zeros((side, side), dtype=np.uint8)
    sq[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = crop * 255
    small = Image.fromarray(sq).resize((TEMPLATE, TEMPLATE), Image.Resampling.BILINEAR)
    return np.asarray(small) > 127


@lru_cache(maxsize=1)
def _templates() -> dict[str, np.ndarray]:
    out = {}
    for shape in SHAPES:
        m = np.asarray(shape_mask(shape, (160, 160), 80, 80, 64)) > 127
        out[shape] = _silhouette(m)
    return out


def classify_shape(mask: np.ndarray) -> tuple[str | None, float]:
    """(shape name, IoU with its template) for a boolean silhouette; (None, 0) when empty."""
    sil = _silhouette(mask)
    if sil is None:
        return None, 0.0
    best, best_iou = None, -1.0
    for name, t in _templates().items():
        iou = float((sil & t).sum() / max(1, (sil | t).sum()))
        if iou > best_iou:
            best, best_iou = name, iou
    return best, best_iou


def nearest_name(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    d = np.linalg.norm(np.asarray([palette[n] for n in names], dtype=np.float32) - rgb, axis=-1)
    return names[int(d.argmin())]


def _chromaticity(rgb: np.ndarray) -> np.ndarray:
    # Dividing by the brightest channel makes a colour and its mixes with black ink (or shading) the same.
    return rgb / np.maximum(rgb.max(axis=-1, keepdims=True), 1.0)


def dominant_colour(pixels: np.ndarray) -> str | None:
    """Majority vote of chromatic pixels (N, 3) over the named colours; None when there are none."""
    mx, mn = pixels.max(axis=-1), pixels.min(axis=-1)
    chroma = pixels[(mx >= 60) & ((mx - mn) / np.maximum(mx, 1) > 0.35)]  # drop ink, greys, pale edges
    if len(chroma) == 0:
        return None
    names = list(COLOURS)
    pal = _chromaticity(np.asarray([COLOURS[n] for n in names], dtype=np.float32))
    votes = np.linalg.norm(_chromaticity(chroma)[:, None, :] - pal[None], axis=-1).argmin(axis=1)
    return names[int(np.bincount(votes, minlength=len(names)).argmax())]


def cell(arr: np.ndarray, region: str) -> np.ndarray:
    col, row = REGIONS[region]
    h, w = arr.shape[:2]
    return arr[row * h // 3 : (row + 1) * h // 3, col * w // 3 : (col + 1) * w // 3]


def read_region(arr: np.ndarray, bg: np.ndarray, region: str) -> dict:
    """What is in one cell: present, colour, shape (None when empty)."""
    c = cell(arr, region)
    fg = foreground(c, bg)
    present = bool(fg.mean() >= MIN_FG_FRACTION)
    if not present:
        return {"present": False, "colour": None, "shape": None}
    shape, iou = classify_shape(fg)
    return {"present": True, "colour": dominant_colour(c[fg]), "shape": shape, "shape_iou": round(iou, 3)}


def prompt_following(img, scene: Scene | dict) -> dict:
    """Check an image against the scene it was prompted with (a Scene or its labels() dict)."""
    labels = scene.labels() if isinstance(scene, Scene) else scene
    arr = _array(img)
    bg = background_colour(arr)
    found_bg = nearest_name(bg, BACKGROUNDS)
    shapes, checks = [], [found_bg == labels["background"]]
    for want in labels["shapes"]:
        got = read_region(arr, bg, want["region"])
        row = {
            "expected": want,
            "found": got,
            "present": got["present"],
            "colour_ok": got["colour"] == want["colour"],
            "shape_ok": got["shape"] == want["shape"],
        }
        checks += [row["present"], row["colour_ok"], row["shape_ok"]]
        shapes.append(row)
    stated = {s["region"] for s in labels["shapes"]}
    extra = [r for r in REGIONS if r not in stated and foreground(cell(arr, r), bg).mean() >= MIN_FG_FRACTION]
    n = max(1, len(shapes))
    return {
        "background": {"expected": labels["background"], "found": found_bg},
        "shapes": shapes,
        "extra_regions": extra,
        "region_acc": sum(s["present"] for s in shapes) / n,
        "colour_acc": sum(s["colour_ok"] for s in shapes) / n,
        "shape_acc": sum(s["shape_ok"] for s in shapes) / n,
        "score": sum(checks) / len(checks),
    }
