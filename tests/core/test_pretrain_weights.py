"""The pretraining's shape-patch weights mark the patches a shape touches, and weight 0 is the plain loss."""

import numpy as np
import torch

from core.layout import patchify
from core.objective import Objective
from core.pretrain_weights import shape_patches, weighted_patch_mse
from core.synth.render import render
from core.synth.scene import Scene, ShapeSpec


def _image(*shapes, size=128):
    return np.array(render(Scene(shapes=shapes, background="white"), size), dtype=np.uint8)


def test_a_small_shape_marks_only_the_patches_it_touches():
    corner = ShapeSpec(shape="star", colour="red", size="small", region="top left", dx=0.0, dy=0.0)
    img = _image(corner)
    marked = shape_patches(torch.from_numpy(img)[None])[0].reshape(4, 4)
    # every patch that holds a pixel off the background is marked, and no other
    off = (np.abs(img.astype(int) - 250).max(axis=-1) > 12).reshape(4, 32, 4, 32).any(axis=(1, 3))
    assert torch.equal(marked, torch.from_numpy(off))
    assert 1 <= int(marked.sum()) <= 4 and not marked[2:, :].any() and not marked[:, 2:].any()


def test_two_shapes_on_a_coloured_background_mark_their_own_patches():
    a = ShapeSpec(shape="ring", colour="blue", size="large", region="top right", dx=0.0, dy=0.0)
    b = ShapeSpec(shape="square", colour="yellow", size="small", region="bottom left", dx=0.0, dy=0.0)
    img = np.array(render(Scene(shapes=(a, b), background="light green"), 128), dtype=np.uint8)
    marked = shape_patches(torch.from_numpy(img)[None])[0].reshape(4, 4)
    assert marked[0, 3] and marked[3, 0] and not marked[1, 1] and not marked[2, 2]


def test_weight_zero_is_the_recipes_mse_and_a_weight_moves_the_loss_to_the_marked_patches():
    g = torch.Generator().manual_seed(0)
    imgs = torch.from_numpy(np.stack([_image(ShapeSpec("circle", "red", "small", "centre", 0.0, 0.0))] * 2))
    x0 = patchify(imgs.permute(0, 3, 1, 2).float() / 127.5 - 1.0)
    x_pred = x0 + 0.1 * torch.randn(x0.shape, generator=g)
    shapes = shape_patches(imgs)
    plain = Objective().loss(x_pred, x0, torch.full((2,), 0.5))
    assert torch.allclose(weighted_patch_mse(x_pred, x0, shapes, 0.0), plain)
    # an error only in the shape's patches weighs more with the weight, an error only elsewhere less
    only_shape = x0 + 0.1 * shapes[..., None]
    only_rest = x0 + 0.1 * (~shapes)[..., None]
    assert weighted_patch_mse(only_shape, x0, shapes, 3.0) > weighted_patch_mse(only_shape, x0, shapes, 0.0)
    assert weighted_patch_mse(only_rest, x0, shapes, 3.0) < weighted_patch_mse(only_rest, x0, shapes, 0.0)
