"""Per-patch loss weights that favour the patches a scene's shapes touch (an option of core.pretrain).

Why: at 128 px a small shape fits inside one or two of the image's sixteen 32-px patches, so under the
recipe's plain MSE the patches that decide its class are a small share of the loss, and the bundled model
drew small stars, rings and squares as soft blobs. Weighting those patches up spends more of the gradient on
them without changing what a sample is or how it is noised.
"""

from __future__ import annotations

import torch

from core.layout import PATCH

# A pixel this far (0-255 levels, any channel) from the image's background colour belongs to a shape. The
# renders' backgrounds are flat and their anti-aliased edges sit well above it.
SHAPE_LEVELS = 12


def shape_patches(images: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """uint8 images [B, H, W, 3] (flat backgrounds) -> bool [B, (H/p)(W/p)] in patchify's raster order: true
    where any pixel of the patch differs from the image's background colour (its per-channel median)."""
    x = images.float()
    b, h, w, _ = x.shape
    background = x.reshape(b, h * w, 3).median(dim=1).values  # shapes cover well under half of any scene
    ink = (x - background[:, None, None, :]).abs().amax(dim=-1) > SHAPE_LEVELS  # [B, H, W]
    return ink.reshape(b, h // patch, patch, w // patch, patch).any(dim=4).any(dim=2).reshape(b, -1)


def pool_shape_patches(images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """shape_patches of a whole pool, computed once in chunks (a median per step would sort every batch)."""
    return torch.cat([shape_patches(images[i : i + chunk]) for i in range(0, images.shape[0], chunk)])


def weighted_patch_mse(x_pred: torch.Tensor, x0: torch.Tensor, shapes: torch.Tensor, extra: float) -> torch.Tensor:
    """Float32 MSE over patch tokens [B, N, D] in which each patch in `shapes` [B, N] counts 1 + extra times;
    extra = 0 is the recipe's plain mean."""
    per_patch = (x_pred.float() - x0.float()).pow(2).mean(dim=-1)
    w = 1.0 + extra * shapes.to(per_patch.dtype)
    return (w * per_patch).sum() / w.sum()
