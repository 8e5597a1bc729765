"""core.reference_sizes counts, from sizes alone and without torch, exactly the tokens the sampler's layout gives
a request with references: the vision placeholders (and their two markers) in the prompt, the raw patches after
the target. The API prices requests with it, the memory plan sizes jobs with it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.layout import build_edit, build_t2i, prepare_references
from core.reference_sizes import reference_tokens, total_reference_tokens
from core.tiny import build_tokenizer

SIZES = [(80, 48), (64, 64), (4000, 1000), (300, 900), (1, 1000), (2048, 1536), (33, 31), (1000, 10)]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _image(w: int, h: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(w * h).random((h, w, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("k", [1, 2, 3, 5, 9, 10])
@pytest.mark.parametrize("height, width", [(64, 96), (256, 256), (1024, 768)])
def test_counts_equal_the_layout(tok, k, height, width):
    sizes = [SIZES[(i + k) % len(SIZES)] for i in range(k)]
    sizes = [s for s in sizes if min(s) >= 8] or [(64, 64)]  # the 1-px strip is the error case below
    try:
        refs = prepare_references([_image(w, h) for w, h in sizes], height, width)
    except ValueError as e:  # too small a target for this many references: both say so, in the same words
        with pytest.raises(ValueError) as got:
            reference_tokens(sizes, height, width)
        assert str(got.value) == str(e)
        return
    with_refs = build_edit(tok, "make it blue", height, width, refs)
    without = build_t2i(tok, "make it blue", height, width)
    counts = reference_tokens(sizes, height, width)
    assert [c.patches for c in counts] == [rh // 32 * (rw // 32) for rh, rw in refs.ref_sizes]
    assert [c.vision - 2 for c in counts] == [gh * gw for gh, gw in refs.vlm_grids]
    grew = with_refs.position_ids.shape[1] - without.position_ids.shape[1]
    assert total_reference_tokens(sizes, height, width) == grew  # every token the references add, no more


def test_an_image_too_thin_to_resize_is_named():
    with pytest.raises(ValueError, match="reference 1: reference image 1x1000 is too small/thin"):
        reference_tokens([(64, 64), (1, 1000)], 64, 64)
    assert reference_tokens([], 64, 64) == [] and total_reference_tokens([], 64, 64) == 0


def test_the_module_imports_no_torch():
    """The API process prices requests with it and must not load torch."""
    tree = ast.parse(Path(__file__).resolve().parents[2].joinpath("core/reference_sizes.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [n for n in names if n.split(".")[0] in ("torch", "numpy", "PIL", "core")]
