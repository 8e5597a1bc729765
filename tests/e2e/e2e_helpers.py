"""Helpers shared by the end-to-end tests (a module name of its own: tests/ folders are not packages)."""
from __future__ import annotations

import io

from PIL import Image, ImageDraw


def dataset_files(n: int = 4, side: int = 256) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart parts for POST /v1/datasets: coloured squares with same-name captions."""
    colours = ["red", "green", "blue", "yellow"]
    parts = []
    for i in range(n):
        img = Image.new("RGB", (side, side), (128, 128, 128))
        o = 20 + 20 * i
        ImageDraw.Draw(img).rectangle([o, o, o + side // 3, o + side // 3], fill=colours[i % 4])
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        parts.append(("files", (f"sq{i}.png", buf.getvalue(), "image/png")))
        parts.append(("files", (f"sq{i}.txt", f"a {colours[i % 4]} square".encode(), "text/plain")))
    return parts
