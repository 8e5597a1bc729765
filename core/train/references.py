"""Training samples with reference images (editing, personalisation), laid out exactly as the sampler does.

    batch = reference_layout(tokenizer, "make the shape blue", [ref_pil], height, width)
    vision = frozen_vision(model, batch)                 # the vision tower, no autograd: it is not trained
                                                         # (the trainer caches it per sample: vision_cache)
    x_pred = model(**edit_inputs(batch, z_t, t, vision)).x_pred
    target = target_slice(batch)                          # x_pred[:, target] is what the loss sees

The layout comes from the functions the sampler uses for a request with references (core.layout:
prepare_references for the official resizing of the vision-tower and raw-patch copies, build_edit for the
token ids, M-RoPE positions and token types), so a LoRA trains on the sequence it will be used with:
[chat prompt with the references' vision placeholders (DeepStack) ... boi tms | N target tokens (noised) |
M reference tokens (clean)]. The loss reads the N target positions only; the reference positions are
inputs, never regressed.
"""

from __future__ import annotations

import torch

from core.layout import Batch, References, build_edit, build_t2i, collate, prepare_references


def reference_layout(tokenizer, caption: str, references, height: int, width: int) -> Batch:
    """One sample's Batch (B = 1): the edit layout with `references`, text-to-image without. `references`:
    PIL images, or what prepare_references made of them for this height x width (training batches come so:
    prepared_references runs on the data thread, off the training step)."""
    if not references:
        return collate([build_t2i(tokenizer, caption, height, width)])
    refs = (
        references if isinstance(references, References) else prepare_references(list(references), height, width)
    )
    return collate([build_edit(tokenizer, caption, height, width, refs)])


def prepared_references(references: list[list], height: int, width: int) -> list:
    """Each sample's reference images resized and split into both of their inputs (prepare_references) for
    a height x width target; [] for a sample without (or with dropped) references. The official resizing is
    LANCZOS on the CPU: tens of ms for a 1024^2 reference, so the data thread does it ahead of the step."""
    return [prepare_references(list(refs), height, width) if refs else [] for refs in references]


def edit_inputs(batch: Batch, z_t: torch.Tensor, timestep, vision) -> dict:
    """Model inputs of one laid-out sample: its target noised to `z_t` at `timestep`, the references' clean
    patches after it, and the vision tower's features given (computed once per sample, so the pixels are not
    passed again)."""
    inputs = batch.model_inputs(batch.vinputs(z_t), timestep)
    inputs.update(pixel_values=None, image_grid_thw=None, vision=vision)
    return inputs


def target_slice(batch: Batch) -> slice:
    """The target's positions in x_pred: right after the text part, before the reference patches."""
    start = batch.input_ids.shape[1]
    return slice(start, start + batch.n_image)


@torch.no_grad()
def frozen_vision(model, batch: Batch):
    """The vision tower's (embeds, deepstack) for a batch's references, or None; computed without autograd
    (the tower is frozen: LoRA targets the language model). The trainer keeps them per sample and flip
    (core.train.vision_cache), so the tower runs once per sample, not per step."""
    if batch.pixel_values is None:
        return None
    return model.vision_features(batch.pixel_values, batch.image_grid_thw)
