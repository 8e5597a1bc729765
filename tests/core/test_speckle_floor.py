"""Why the bundled model's patch speckle cannot reach 0 at its width (issue 13; bench/speckle_floor.py).

HiDream-O1's last layer maps the hidden state to a 32-px patch with one linear map plus a bias, so every patch a
384-wide model draws lies in a 384-dimensional affine subspace of the 3,072 patch values. These tests pin the two
facts the model card's claim rests on: the sampler's output lies in that subspace, and a render's patches,
projected onto it (the best these head weights can draw), keep their shapes but not a clean background.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.transforms import to_tensor
from core.layout import patchify
from core.loading import load_model, load_tokenizer
from core.sampler import Sampler, to_pil
from core.synth import render, sample_scene
from core.synth.evaluate import evaluate

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "o1-shapes"


@pytest.fixture(scope="module")
def model():
    return load_model(BUNDLED, torch.float32, "cpu")


def head_basis(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(orthonormal basis of the head's column space [3072, hidden], bias [3072])."""
    lin = model.model.final_layer2.linear
    q, _ = torch.linalg.qr(lin.weight.detach().float())
    return q, lin.bias.detach().float()


def test_the_sampler_draws_patches_inside_the_heads_subspace(model):
    sampler = Sampler(model, load_tokenizer(BUNDLED))
    z = sampler(
        ["a small green star in the top left on a light grey background"],
        width=256,
        height=256,
        steps=20,
        guidance=2.0,
        return_latents=True,
    ).float()
    q, b = head_basis(model)
    off = z - b
    residual = off - off @ q @ q.T
    assert float(residual.norm() / off.norm()) < 0.01  # measured 0.26%: the last steps mix in a trace of z_t
    # a random patch is nowhere near it: the subspace is 384 of 3,072 dimensions
    noise = torch.randn_like(z)
    assert float((noise - noise @ q @ q.T).norm() / noise.norm()) > 0.9


def test_renders_projected_onto_the_head_keep_their_shapes_but_not_a_clean_background(model):
    q, b = head_basis(model)
    scenes = [sample_scene(999, i, two_shape_prob=0.0) for i in range(16)]
    x = patchify(torch.stack([to_tensor(render(s, 256)) for s in scenes]))
    best = to_pil((x - b) @ q @ q.T + b, 256, 256)
    scores = evaluate(list(zip(best, [s.labels() for s in scenes])))
    assert scores["mean_shape_acc"] == 1.0 and scores["mean_colour_acc"] == 1.0
    # the floor the model card quotes: 1.7 levels RMS at 256 px (the model itself draws 2.3)
    assert 1.4 < scores["mean_speckle"] < 2.0
    exact = to_pil(x, 256, 256)  # the renders themselves score 0: the measure sees only the projection
    assert evaluate(list(zip(exact, [s.labels() for s in scenes])))["mean_speckle"] == pytest.approx(0.0, abs=1e-6)
    assert np.array_equal(np.asarray(exact[0]), np.asarray(render(scenes[0], 256)))
