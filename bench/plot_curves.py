"""Draw issue 14's evidence figure with PIL alone (matplotlib is not installed here): two panels side by
side sharing the step axis -- left the validation loss (and its adapter-off baseline), right the style and
prompt-following scores of images generated at the same steps; a dashed line marks the best validation step.

    plot_validation(json.loads(Path("runs/overfit/curves.json").read_text()), Path("docs/images/x.png"))
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

W, H = 560, 400  # one panel
PAD_L, PAD_R, PAD_T, PAD_B = 64, 16, 40, 48
BLUE, GREY, ORANGE, GREEN, RED = (31, 119, 180), (150, 150, 150), (230, 120, 20), (40, 150, 60), (200, 40, 40)
PURPLE = (130, 60, 170)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one size only
        return ImageFont.load_default()


class Panel:
    def __init__(
        self,
        draw: ImageDraw.ImageDraw,
        x0: int,
        title: str,
        xs: tuple[float, float],
        ys: tuple[float, float],
        ylabel: str,
    ):
        self.d, self.x0, self.xs, self.ys = draw, x0, xs, ys
        self.left, self.right = x0 + PAD_L, x0 + W - PAD_R
        self.top, self.bottom = PAD_T, H - PAD_B
        f = _font(14)
        draw.text((x0 + W // 2, 12), title, fill="black", font=f, anchor="mt")
        draw.rectangle([self.left, self.top, self.right, self.bottom], outline="black")
        small = _font(11)
        for i in range(5):
            y = ys[0] + (ys[1] - ys[0]) * i / 4
            py = self.py(y)
            draw.line([self.left - 4, py, self.left, py], fill="black")
            draw.text((self.left - 6, py), f"{y:.3g}", fill="black", font=small, anchor="rm")
        for i in range(5):
            x = xs[0] + (xs[1] - xs[0]) * i / 4
            px = self.px(x)
            draw.line([px, self.bottom, px, self.bottom + 4], fill="black")
            draw.text((px, self.bottom + 6), f"{x:.0f}", fill="black", font=small, anchor="mt")
        draw.text(((self.left + self.right) // 2, H - 14), "training step", fill="black", font=small, anchor="mb")
        draw.text((x0 + 4, self.top - 16), ylabel, fill="black", font=small)
        self.legend_y = self.top + 8

    def px(self, x: float) -> float:
        return self.left + (x - self.xs[0]) / (self.xs[1] - self.xs[0] or 1) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.ys[0]) / (self.ys[1] - self.ys[0] or 1) * (self.bottom - self.top)

    def line(self, points, colour, label: str, width: int = 2, dots: bool = True) -> None:
        pts = [(self.px(x), self.py(y)) for x, y in points]
        if len(pts) > 1:
            self.d.line(pts, fill=colour, width=width)
        if dots:
            for x, y in pts:
                self.d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        self.d.line([self.right - 170, self.legend_y, self.right - 150, self.legend_y], fill=colour, width=3)
        self.d.text((self.right - 146, self.legend_y), label, fill="black", font=_font(11), anchor="lm")
        self.legend_y += 16

    def vline(self, x: float, colour, label: str) -> None:
        px = self.px(x)
        for y in range(int(self.top), int(self.bottom), 8):
            self.d.line([px, y, px, min(y + 4, self.bottom)], fill=colour, width=1)
        self.d.text((px + 3, self.bottom - 4), label, fill=colour, font=_font(11), anchor="lb")


def _range(values, pad: float = 0.08) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    span = (hi - lo) or abs(hi) or 1.0
    return lo - pad * span, hi + pad * span


def plot_validation(report: dict, path: Path) -> Path:
    rows = [r for r in report["rows"] if not r["baseline"]]
    base = next((r for r in report["rows"] if r["baseline"]), None)
    steps = [r["step"] for r in rows]
    xs = (0.0, float(max(steps)))
    img = Image.new("RGB", (2 * W, H), "white")
    d = ImageDraw.Draw(img)
    losses = [r["val_loss"] for r in rows] + ([base["val_loss"]] if base else [])
    left = Panel(d, 0, "validation loss (fixed noise, 8 held-out images)", xs, _range(losses), "loss")
    if base:
        left.line([(0, base["val_loss"]), (xs[1], base["val_loss"])], GREY, "base model (adapter off)", 1, False)
    left.line([(r["step"], r["val_loss"]) for r in rows], BLUE, "validation loss")
    right = Panel(d, W, "generated images, 8 held-out prompts + trigger", xs, (0.0, 1.0), "score (0..1)")
    pts = ([(0, base["style"])] if base else []) + [(r["step"], r["style"]) for r in rows]
    right.line(pts, ORANGE, "style score")
    pts = ([(0, base["follow"])] if base else []) + [(r["step"], r["follow"]) for r in rows]
    right.line(pts, GREEN, "prompt following")
    if "extra_cells" in rows[0]:
        pts = ([(0, base["extra_cells"] / 9)] if base else []) + [(r["step"], r["extra_cells"] / 9) for r in rows]
        right.line(pts, PURPLE, "empty cells drawn (/9)")
    best = report["validation"]["best_step"]
    if best is not None:
        left.vline(best, RED, f"best step {best}")
        right.vline(best, RED, f"best step {best}")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
