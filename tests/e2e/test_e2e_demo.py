"""`make demo` in miniature (a few steps): the whole HTTP flow runs and writes the base / LoRA+trigger / LoRA grid."""

from __future__ import annotations

import pytest
from PIL import Image

from ops import demo


@pytest.mark.slow
def test_demo_smoke_run_writes_the_grid(tmp_path):
    assert (
        demo.main(
            [
                "--steps",
                "2",
                "--images",
                "4",
                "--gen-steps",
                "2",
                "--prompts",
                "2",
                "--size",
                "64",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    grid = Image.open(tmp_path / "grid.png")
    side = 2 * 64  # images shown at twice their size
    assert grid.size == (3 * (side + 8) + 8, 14 + 8 + 2 * (side + 14 + 8) + 8)  # 3 columns, 2 prompts
