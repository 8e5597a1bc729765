"""Edit pairs for pretraining the bundled model: a pool rendered once, batches laid out on the device.

    pool = EditPool.render(seed, start, n, size, workers)       # host: references, targets, vision images
    pool = pool.to(device, tokenizer)                           # tensors + the laid-out instruction templates
    inputs, x0, refs = pool.batch(idx, drop)     # model inputs but vinputs, clean target, clean reference patches
    x_pred = model(vinputs=torch.cat([z_t, refs], 1), timestep=t, **inputs).x_pred[:, pool.target(inputs)]

A base that never saw a reference image cannot be taught an edit by a small LoRA (docs/evidence.md
section 3: the official edit layout alone derails a text-to-image-only model), so the bundled model is
pretrained on a share of edits (core.synth.edit_pairs.pretraining_edit: keep, change the background, move
the shape). Every piece of an edit sample is made the way the sampler makes it for a request with one
reference: the reference's official resizing (core.layout.prepare_references) runs in the render workers,
and the token ids, M-RoPE positions and token types come from core.layout.build_edit, once per
instruction (there are 15), collated into one padded template batch. A training batch then only gathers
rows of that template on the device and turns the stored uint8 images into the vision tower's rows and the
raw reference patches there (tests/core/test_pretrain_edits.py compares it with collate(build_edit(...))).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from core.layout import (
    PATCH,
    VISION_PATCH,
    build_edit,
    collate,
    condition_side,
    patchify,
    prepare_references,
    reference_side,
    resize_to_area,
    unit_range,
    vision_input,
    vision_pixel_rows,
)
from core.parallel_ranges import map_ranges
from core.synth.edit_pairs import pretraining_edit, pretraining_instructions
from core.synth.render import render

EMPTY = " "  # the instruction a dropped caption becomes (the sampler's negative prompt)


def vision_image(reference: Image.Image, height: int, width: int) -> np.ndarray:
    """The image the vision tower sees for one reference of a height x width target (uint8 HWC): the
    official resizing of prepare_references, stopped before the rows are cut (vision_pixel_rows cuts them
    on the device)."""
    r = resize_to_area(reference.convert("RGB"), reference_side(1, height, width))
    return np.asarray(vision_input(r, condition_side(1)), dtype=np.uint8)


def unit_patches(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> raw 32-px patches [B, N, 3072] in [-1, 1]."""
    return patchify(unit_range(images))


def _render_chunk(start: int, stop: int, seed: int, size: int, instructions: list[str]):
    refs, tgts, vis, which = [], [], [], []
    for k in range(start, stop):
        ref_scene, tgt_scene, text = pretraining_edit(seed, k)
        ref = render(ref_scene, size)
        refs.append(np.asarray(ref, dtype=np.uint8))
        tgts.append(np.asarray(render(tgt_scene, size), dtype=np.uint8))
        vis.append(vision_image(ref, size, size))
        which.append(instructions.index(text))
    return np.stack(refs), np.stack(tgts), np.stack(vis), which


@dataclass
class EditPool:
    """n rendered edit pairs at one size: references, targets and vision images (uint8), instruction index."""

    size: int
    references: np.ndarray | torch.Tensor  # [n, size, size, 3]
    targets: np.ndarray | torch.Tensor  # [n, size, size, 3]
    vision: np.ndarray | torch.Tensor  # [n, vh, vw, 3]
    instruction: np.ndarray | torch.Tensor  # [n] index into `instructions`
    instructions: list[str]
    template: object = None  # core.layout.Batch of every instruction's layout (row 0: the empty prompt)

    @classmethod
    def render(cls, seed: int, start: int, n: int, size: int, workers: int) -> "EditPool":
        instructions = [EMPTY] + pretraining_instructions()
        parts = map_ranges(_render_chunk, start, n, workers, seed, size, instructions)
        cat = [np.concatenate([p[i] for p in parts]) for i in range(3)]
        which = np.array([w for p in parts for w in p[3]], dtype=np.int64)
        return cls(size, cat[0], cat[1], cat[2], which, instructions)

    def to(self, device, tokenizer) -> "EditPool":
        """The pool on `device`, with the template: one build_edit per instruction, collated (padded)."""
        blank = Image.new("RGB", (self.size, self.size), (250, 250, 250))
        refs = prepare_references([blank], self.size, self.size)  # only its sizes and grids are used
        template = collate([build_edit(tokenizer, t, self.size, self.size, refs) for t in self.instructions])
        template.pixel_values = template.image_grid_thw = template.ref_patches = None
        return EditPool(
            self.size,
            *(
                torch.as_tensor(a).to(device)
                for a in (self.references, self.targets, self.vision, self.instruction)
            ),
            self.instructions,
            template.to(device),
        )

    def __len__(self) -> int:
        return int(self.instruction.shape[0])

    def batch(self, idx: torch.Tensor, drop: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """For pool rows `idx`: the model inputs but vinputs and timestep, the clean target patches x0 and
        the clean reference patches (vinputs = [noised target, references]). Rows with `drop` get the
        empty instruction, with their reference, as the sampler's unconditional row has it."""
        t = self.template
        which = torch.where(drop, torch.zeros_like(idx), self.instruction[idx])
        lens = t.text_lengths[which]
        # keep the AR columns the longest row needs, then tms and the image part (drop the common padding)
        width, total = t.input_ids.shape[1], t.token_types.shape[1]
        a = int(lens.max()) - 1
        dev = idx.device
        cols = torch.cat([torch.arange(a, device=dev), torch.arange(width - 1, total, device=dev)])
        n_text = a + 1
        b = len(idx)
        grid = (self.vision.shape[1] // VISION_PATCH, self.vision.shape[2] // VISION_PATCH)
        inputs = dict(
            input_ids=t.input_ids[which][:, cols[:n_text]],
            position_ids=t.position_ids[:, which][:, :, cols],
            token_types=t.token_types[which][:, cols],
            text_lengths=lens,
            pixel_values=vision_pixel_rows(self.vision[idx]),
            image_grid_thw=torch.tensor([[1, *grid]], device=dev).expand(b, 3),
        )
        refs = unit_patches(self.references[idx]).to(torch.bfloat16).float()
        return inputs, unit_patches(self.targets[idx]), refs

    def target(self, inputs: dict) -> slice:
        """The target's positions in x_pred: right after the text part, before the reference patches."""
        n_text = inputs["input_ids"].shape[1]
        return slice(n_text, n_text + (self.size // PATCH) ** 2)
