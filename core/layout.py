"""Prompt (+ reference images) -> token ids, M-RoPE positions, token types; pixels <-> patch tokens.

    from core.layout import build_t2i, collate, patchify, unpatchify
    batch = collate([build_t2i(tok, "a red circle", 64, 96), build_t2i(tok, " ", 64, 96)])
    x_pred = model(**batch.model_inputs(vinputs, timestep)).x_pred

A sequence is [chat-templated prompt ... <|boi_token|> <|tms_token|> | N target patches | M reference
patches]. `input_ids` hold only the text part; the patches enter the model as `vinputs`. Positions:
text token n -> (n, n, n); vision-tower placeholders (reference images seen by the VLM) follow Qwen3-VL's
M-RoPE; the target grid is anchored at (4096, 4096 + r, 4096 + c) whatever the prompt length, and each
reference grid starts one past the largest position before it (official get_rope_index_fix_point).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

# the sizes of the official resizing, torch-free so that the API can price references (core.reference_sizes)
from core.reference_sizes import (
    PATCH,
    VISION_MERGE,
    VISION_PATCH,
    VISION_TEMPORAL,
    ReferenceSizeError,
    area_size,
    condition_side,
    condition_size,
    reference_side,
    vision_bounds,
)

FIX_POINT = 4096  # where the generated image's grid is anchored on all three M-RoPE axes
TMS_TOKEN, BOI_TOKEN = "<|tms_token|>", "<|boi_token|>"
IMAGE_PAD, VISION_START, VISION_END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"
DEFAULT_TMS_ID = 151673


# ----------------------------------------------------------------------------- data
@dataclass
class Sample:
    """One prompt's layout. position_ids [3, S], token_types [S] (binary, as the model takes them),
    vinput_mask [S] (target + reference positions), S = len(input_ids) + n_image + n_ref."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    token_types: torch.Tensor
    vinput_mask: torch.Tensor
    height: int
    width: int
    n_image: int
    n_ref: int = 0
    pixel_values: torch.Tensor | None = None  # vision-tower rows for the placeholders, [P, 1536]
    image_grid_thw: torch.Tensor | None = None  # [K, 3]
    ref_patches: torch.Tensor | None = None  # [M, 3072] clean reference patches, in [-1, 1]

    @property
    def text_length(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class Batch:
    """Samples right-padded in their AR part (pads sit just before tms, so every row splits at the same
    index); text_lengths [B] = each row's real number of input_ids (AR tokens + tms)."""

    input_ids: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [3, B, S]
    token_types: torch.Tensor  # [B, S]
    vinput_mask: torch.Tensor  # [B, S]
    text_lengths: torch.Tensor  # [B]
    height: int
    width: int
    n_image: int
    n_ref: int = 0
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    ref_patches: torch.Tensor | None = None  # [B, M, 3072]

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def padded(self) -> bool:
        return bool((self.text_lengths != self.input_ids.shape[1]).any())

    def to(self, device) -> "Batch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return Batch(**moved)

    def vinputs(self, target: torch.Tensor) -> torch.Tensor:
        """Target tokens [B, N, 3072] followed by the (clean) reference patches, as the model takes them."""
        if self.ref_patches is None:
            return target
        return torch.cat([target, self.ref_patches.to(target.device, target.dtype)], dim=1)

    def model_inputs(self, vinputs: torch.Tensor, timestep) -> dict:
        """Keyword arguments for HiDreamO1.forward (text_lengths only when some row is padded)."""
        return dict(
            input_ids=self.input_ids,
            position_ids=self.position_ids,
            vinputs=vinputs,
            timestep=timestep,
            token_types=self.token_types,
            pixel_values=self.pixel_values,
            image_grid_thw=self.image_grid_thw,
            text_lengths=self.text_lengths if self.padded else None,
        )


# ----------------------------------------------------------------------------- pixels <-> tokens
def check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0 or height % PATCH or width % PATCH:
        raise ValueError(f"height and width must be positive multiples of {PATCH}, got {height}x{width}")


def patchify(images: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """[B, 3, H, W] -> [B, (H/p)(W/p), 3*p*p]: raster order, each token channel-major (R block, G, B)."""
    if images.ndim != 4:
        raise ValueError(f"patchify expects [B, C, H, W], got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"height and width must be multiples of {patch}, got {h}x{w}")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(
    tokens: torch.Tensor, height: int, width: int, patch: int = PATCH, channels: int = 3
) -> torch.Tensor:
    """[B, N, 3*p*p] -> [B, 3, H, W] (inverse of patchify)."""
    gh, gw = height // patch, width // patch
    b, n, d = tokens.shape
    if n != gh * gw or d != channels * patch * patch:
        raise ValueError(
            f"{n} tokens of {d} do not make a {height}x{width} image "
            f"({gh * gw} tokens of {channels * patch * patch})"
        )
    x = tokens.reshape(b, gh, gw, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, height, width)


def snap_size(height: int, width: int, area: int = 2048 * 2048, multiple: int = PATCH) -> tuple[int, int]:
    """Optional quality default: keep the aspect ratio, scale to ~`area` pixels, round to `multiple`."""
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {height}x{width}")
    scale = (area / (height * width)) ** 0.5
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return h, w


# ----------------------------------------------------------------------------- token ids
def token_id(tokenizer, token: str) -> int | None:
    """The id of `token`, or None when the tokenizer does not know it (never a silent unk id).

    One lookup, not `get_vocab()`: that builds a dict of the whole vocabulary (151k entries, ~0.1-0.3 s)
    on every call, and layouts are built per prompt (per caption in training).
    """
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tokenizer.convert_ids_to_tokens(tid) != token:  # unknown (or answered with the unk id)
        return None
    return int(tid)


def special_id(tokenizer, token: str, fallback: int | None = None) -> int:
    tid = token_id(tokenizer, token)
    if tid is None:
        if fallback is None:
            raise ValueError(f"the tokenizer has no {token} token")
        return fallback
    return tid


def chat_text(tokenizer, prompt: str, n_images: int = 0) -> str:
    """One user message through the tokenizer's chat template, with the generation prompt.

    Image placeholders are written as the Qwen3-VL template writes an image item, so string content
    works with any template.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    content = (VISION_START + IMAGE_PAD + VISION_END) * n_images + prompt
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def prompt_ids(tokenizer, prompt: str, n_images: int = 0) -> list[int]:
    """Chat-templated ids + boi + tms (the whole text part of a sample; placeholders not yet expanded)."""
    ids = tokenizer(chat_text(tokenizer, prompt, n_images), add_special_tokens=False)["input_ids"]
    return list(ids) + [special_id(tokenizer, BOI_TOKEN), special_id(tokenizer, TMS_TOKEN, DEFAULT_TMS_ID)]


# ----------------------------------------------------------------------------- positions
def _grid_positions(start: int, gh: int, gw: int) -> torch.Tensor:
    """[3, gh*gw]: (start, start + r, start + c) in raster order."""
    r = torch.arange(gh).repeat_interleave(gw)
    c = torch.arange(gw).repeat(gh)
    return torch.stack([torch.full_like(r, start), start + r, start + c])


def text_positions(input_ids: torch.Tensor, image_pad_id: int, vlm_grids: list[tuple[int, int]]) -> torch.Tensor:
    """[3, L]: text n -> (n, n, n); each run of image pads is a merged (gh, gw) grid placed at the next
    free position, after which text resumes one past the largest position used (Qwen3-VL M-RoPE)."""
    ids = input_ids.tolist()
    out, pos, i, k = [], 0, 0, 0
    while i < len(ids):
        if ids[i] == image_pad_id:
            if k >= len(vlm_grids):
                raise ValueError(f"input_ids hold more image-pad runs than the {len(vlm_grids)} grids given")
            gh, gw = vlm_grids[k]
            n = gh * gw
            if ids[i : i + n] != [image_pad_id] * n:
                raise ValueError(f"image {k}: expected {n} consecutive <|image_pad|> tokens for grid {gh}x{gw}")
            grid = _grid_positions(pos, gh, gw)
            out.append(grid)
            pos = int(grid.max()) + 1
            i, k = i + n, k + 1
        else:
            out.append(torch.full((3, 1), pos))
            pos, i = pos + 1, i + 1
    if k != len(vlm_grids):
        raise ValueError(f"{len(vlm_grids)} image grids given but input_ids hold {k} image-pad runs")
    return torch.cat(out, dim=1) if out else torch.zeros(3, 0, dtype=torch.long)


def generation_positions(grids: list[tuple[int, int]], fix_point: int = FIX_POINT) -> torch.Tensor:
    """[3, sum gh*gw]: the target grid at fix_point, each later grid one past the largest before it."""
    out, start = [], fix_point
    for gh, gw in grids:
        g = _grid_positions(start, gh, gw)
        out.append(g)
        start = int(g.max()) + 1
    return torch.cat(out, dim=1)


# ----------------------------------------------------------------------------- samples
def layout_from_ids(
    ids: list[int] | torch.Tensor,
    height: int,
    width: int,
    *,
    image_pad_id: int = 151655,
    vlm_grids: list[tuple[int, int]] = (),
    ref_sizes: list[tuple[int, int]] = (),
) -> Sample:
    """The layout of already-tokenised text (ending with boi, tms): positions, token types, masks.

    vlm_grids: merged (h, w) grids of the vision-tower placeholders in input_ids (already expanded);
    ref_sizes: (height, width) of each raw reference image appended after the target.
    """
    check_size(height, width)
    input_ids = torch.as_tensor(list(ids) if not isinstance(ids, torch.Tensor) else ids, dtype=torch.long)
    L = input_ids.shape[0]
    grids = [(height // PATCH, width // PATCH)]
    for rh, rw in ref_sizes:
        check_size(rh, rw)
        grids.append((rh // PATCH, rw // PATCH))
    n_image = grids[0][0] * grids[0][1]
    n_ref = sum(h * w for h, w in grids[1:])
    pos = torch.cat([text_positions(input_ids, image_pad_id, list(vlm_grids)), generation_positions(grids)], 1)
    s = L + n_image + n_ref
    token_types = torch.zeros(s, dtype=torch.long)
    token_types[L - 1 :] = 1  # tms, target and references are generation tokens
    vinput_mask = torch.zeros(s, dtype=torch.bool)
    vinput_mask[L:] = True
    return Sample(input_ids, pos, token_types, vinput_mask, height, width, n_image, n_ref)


def build_t2i(tokenizer, prompt: str, height: int, width: int) -> Sample:
    """Text-to-image layout of one prompt at height x width (multiples of 32)."""
    return layout_from_ids(
        prompt_ids(tokenizer, prompt), height, width, image_pad_id=special_id(tokenizer, IMAGE_PAD, 151655)
    )


def build_edit(tokenizer, prompt: str, height: int, width: int, refs: "References") -> Sample:
    """Image-conditioned layout: K reference placeholders in the user message (vision tower, AR tokens),
    target grid, then the K raw reference grids (generation tokens, clean). `refs` from prepare_references,
    computed once per request and shared by the cond and uncond prompts."""
    pad = special_id(tokenizer, IMAGE_PAD, 151655)
    ids = []
    grids = iter(refs.vlm_grids)
    for i in prompt_ids(tokenizer, prompt, n_images=len(refs.vlm_grids)):
        if i == pad:  # each placeholder stands for one merged vision grid
            gh, gw = next(grids)
            ids.extend([pad] * (gh * gw))
        else:
            ids.append(i)
    sample = layout_from_ids(
        ids, height, width, image_pad_id=pad, vlm_grids=refs.vlm_grids, ref_sizes=refs.ref_sizes
    )
    sample.pixel_values, sample.image_grid_thw, sample.ref_patches = (
        refs.pixel_values,
        refs.image_grid_thw,
        refs.ref_patches,
    )
    return sample


# ----------------------------------------------------------------------------- reference images
@dataclass
class References:
    """Reference images prepared for one request: the vision tower's rows and the raw patches."""

    pixel_values: torch.Tensor  # [sum of grid_h*grid_w, 1536], bf16-rounded values in float32
    image_grid_thw: torch.Tensor  # [K, 3] vision patch grids (before merging)
    ref_patches: torch.Tensor  # [M, 3072] raw 32 px patches in [-1, 1], bf16-rounded, all references
    ref_sizes: list[tuple[int, int]]  # (height, width) of each resized reference
    vlm_grids: list[tuple[int, int]]  # merged (h, w) grid of each reference in the vision tower
    resized: list[Image.Image] = field(default_factory=list)  # the references at their patch size


def resize_to_area(img: Image.Image, side: int, multiple: int = PATCH) -> Image.Image:
    """Resize to at most side*side pixels, each side a multiple of `multiple`, keeping the aspect ratio by
    scaling to cover and center-cropping (the official resize_pilimage behaviour)."""
    original = img.size
    while min(img.size) >= 2 * side:  # cheap box halving first for large images (halved_size counts these)
        img = img.resize((img.width // 2, img.height // 2), resample=Image.BOX)
    w, h = img.size
    tw, th = area_size(w, h, side, multiple, original=original)
    if w / tw < h / th:  # width is the tighter side: match it, crop height
        nh = round(h / (w / tw))
        img = img.resize((tw, nh), resample=Image.BICUBIC)
        top = (nh - th) // 2
        return img.crop((0, top, tw, top + th))
    nw = round(w / (h / th))
    img = img.resize((nw, th), resample=Image.BICUBIC)
    left = (nw - tw) // 2
    return img.crop((left, 0, left + tw, th))


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1], computed as the official transforms do."""
    x = images.movedim(-1, -3).to(torch.float32).mul_(1 / 255)
    return x.sub(0.5).div_(0.5)


def to_unit_range(img) -> torch.Tensor:
    """uint8 HWC (PIL or array) -> float32 CHW in [-1, 1] (unit_range of one image)."""
    return unit_range(
        torch.from_numpy(np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img).copy())
    )


def vision_bounded(img: Image.Image) -> Image.Image:
    """The image resized (BICUBIC) to the image processor's size rule, where it differs."""
    w, h = vision_bounds(img.width, img.height)
    return img if (w, h) == img.size else img.resize((w, h), resample=Image.BICUBIC)


def vision_input(resized: Image.Image, condition: int) -> Image.Image:
    """What the vision tower sees of one reference already resized for the target (resize_to_area): LANCZOS to
    the condition area, then the processor's size rule. ValueError when the aspect is too extreme for it."""
    vw, vh = condition_size(condition, resized.width, resized.height)
    return vision_bounded(resized.resize((vw, vh), resample=Image.LANCZOS))


def vision_pixel_rows(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] (H, W within the processor's size rule) -> the vision tower's rows
    [B * gh * gw, 3*2*16*16]: normalised as the processor does (rescale in float64, then float32
    (x - 0.5) / 0.5), the one frame duplicated in time, rows grouped by 2x2 merge block, each row
    (channel, temporal copy, y, x), rounded to bfloat16 as the official pipeline passes them."""
    b, h, w, _ = images.shape
    x = (images.double() * (1 / 255)).float().permute(0, 3, 1, 2)
    x = (x - 0.5) / 0.5
    p, m, tp = VISION_PATCH, VISION_MERGE, VISION_TEMPORAL
    gh, gw = h // p, w // p
    x = x[:, None].expand(b, tp, 3, h, w)
    x = x.reshape(b, tp, 3, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(b * gh * gw, 3 * tp * p * p).to(torch.bfloat16).float()


def vision_rows(img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """An RGB image -> (pixel_values [gh*gw, 3*2*16*16], grid_thw [1, 3]) for the Qwen3-VL vision tower."""
    img = vision_bounded(img)
    rows = vision_pixel_rows(torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy())[None])
    return rows, torch.tensor([[1, img.height // VISION_PATCH, img.width // VISION_PATCH]])


def prepare_references(images, height: int, width: int, condition: int | None = None) -> References:
    """Resize K reference images for a height x width target and compute both of their inputs."""
    if not images:
        raise ValueError("prepare_references needs at least one image")
    check_size(height, width)
    k = len(images)
    side, cond = reference_side(k, height, width), condition or condition_side(k)
    pix, thw, patches, sizes, grids, resized = [], [], [], [], [], []
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img, dtype=np.uint8))
        try:
            r = resize_to_area(img.convert("RGB"), side)
            seen = vision_input(r, cond)
        except ValueError as e:
            raise ReferenceSizeError(i, str(e)) from None
        resized.append(r)
        sizes.append((r.height, r.width))
        patches.append(patchify(to_unit_range(r)[None])[0].to(torch.bfloat16).float())
        rows, grid = vision_rows(seen)
        pix.append(rows)
        thw.append(grid)
        grids.append((int(grid[0, 1]) // VISION_MERGE, int(grid[0, 2]) // VISION_MERGE))
    return References(torch.cat(pix), torch.cat(thw), torch.cat(patches), sizes, grids, resized)


# ----------------------------------------------------------------------------- batches
def collate(samples: list[Sample], pad_id: int = 0) -> Batch:
    """Stack samples whose prompts may differ in length: each AR part is right-padded (before tms)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    first = samples[0]
    for i, s in enumerate(samples):
        if (s.height, s.width, s.n_image, s.n_ref) != (first.height, first.width, first.n_image, first.n_ref):
            raise ValueError(
                f"sample {i} is {s.height}x{s.width} with {s.n_ref} reference tokens; sample 0 is "
                f"{first.height}x{first.width} with {first.n_ref}: one batch needs one size"
            )
    n_ar = max(s.text_length for s in samples) - 1
    ids, pos, types, vmask = [], [], [], []
    for s in samples:
        a = s.text_length - 1
        gap = n_ar - a
        ids.append(torch.cat([s.input_ids[:a], torch.full((gap,), pad_id, dtype=torch.long), s.input_ids[a:]]))
        # pads take the tms position; nothing real ever attends to them
        pos.append(
            torch.cat(
                [s.position_ids[:, :a], s.position_ids[:, a : a + 1].expand(3, gap), s.position_ids[:, a:]], dim=1
            )
        )
        types.append(torch.cat([s.token_types[:a], torch.zeros(gap, dtype=torch.long), s.token_types[a:]]))
        vmask.append(torch.cat([s.vinput_mask[:a], torch.zeros(gap, dtype=torch.bool), s.vinput_mask[a:]]))
    pix = [s.pixel_values for s in samples if s.pixel_values is not None]
    thw = [s.image_grid_thw for s in samples if s.image_grid_thw is not None]
    refs = [s.ref_patches for s in samples]
    if any(r is None for r in refs) and not all(r is None for r in refs):
        raise ValueError("either every sample of a batch has reference patches or none has")
    return Batch(
        input_ids=torch.stack(ids),
        position_ids=torch.stack(pos, dim=1),
        token_types=torch.stack(types),
        vinput_mask=torch.stack(vmask),
        text_lengths=torch.tensor([s.text_length for s in samples]),
        height=first.height,
        width=first.width,
        n_image=first.n_image,
        n_ref=first.n_ref,
        pixel_values=torch.cat(pix) if pix else None,
        image_grid_thw=torch.cat(thw) if thw else None,
        ref_patches=torch.stack(refs) if refs[0] is not None else None,
    )
