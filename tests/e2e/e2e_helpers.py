"""Helpers shared by the end-to-end tests (a module name of its own: tests/ folders are not packages)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]


def start_embedded(data_dir: Path, port: int, model: Path) -> tuple[subprocess.Popen, str, str]:
    """`python -m ops.embedded` on its own data folder (no O1LORA_* from outside); (process, API key, output
    so far) once it printed its key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("O1LORA_")}
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
    out = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        out.append(line)
        m = re.match(r"API key: (\S+)", line)
        if m:
            return proc, m.group(1), "".join(out)
    proc.kill()
    raise AssertionError("embedded service did not start:\n" + "".join(out))


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
