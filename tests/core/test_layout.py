"""Token layout, positions, padding, pixels <-> patches, and reference-image preparation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from core.layout import (
    FIX_POINT,
    build_edit,
    build_t2i,
    collate,
    layout_from_ids,
    patchify,
    prepare_references,
    reference_side,
    resize_to_area,
    snap_size,
    unpatchify,
)
from core.reference_sizes import vision_size
from core.tiny import build_tokenizer

ATOL = RTOL = 1e-4  # the conformance README's tolerance for float32


def chat_ids(prompt_key: str, vlm_tokens: int) -> list[int]:
    """The conformance edit case's text ids (README section 2): fixed stand-ins for the real tokenizer."""
    assert prompt_key == "P4"
    return (
        [151644, 872, 198, 151652]
        + [151655] * vlm_tokens
        + [151653, 4340, 5765, 315, 264, 11958, 48342, 30, 151645, 198, 151644, 77091, 198, 151669, 151673]
    )


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_patchify_is_raster_order_channel_major_and_inverts():
    img = torch.arange(2 * 3 * 64 * 96, dtype=torch.float32).reshape(2, 3, 64, 96)
    tokens = patchify(img)
    assert tokens.shape == (2, 6, 3072)
    # token 1 = row 0, column 1; its first 1024 numbers are the red 32x32 block, row-major
    torch.testing.assert_close(tokens[0, 1, :1024], img[0, 0, :32, 32:64].reshape(-1))
    torch.testing.assert_close(tokens[0, 3, 1024:2048], img[0, 1, 32:64, :32].reshape(-1))  # row 1, col 0, green
    torch.testing.assert_close(unpatchify(tokens, 64, 96), img)
    with pytest.raises(ValueError, match="multiples of 32"):
        patchify(torch.zeros(1, 3, 64, 80))
    with pytest.raises(ValueError, match="do not make a 64x64 image"):
        unpatchify(tokens, 64, 64)


def test_snap_size_keeps_aspect_and_multiple():
    assert snap_size(1024, 1024) == (2048, 2048)
    h, w = snap_size(720, 1280)
    assert h % 32 == 0 and w % 32 == 0 and abs(w / h - 16 / 9) < 0.03 and abs(h * w - 2048**2) < 0.03 * 2048**2
    assert snap_size(100, 300, area=64 * 64)[0] % 32 == 0


def test_t2i_layout_from_the_tokenizer(tok):
    s = build_t2i(tok, "a red circle", 64, 96)
    vocab = tok.get_vocab()
    ids = s.input_ids.tolist()
    assert ids[-2:] == [vocab["<|boi_token|>"], vocab["<|tms_token|>"]]
    assert tok.decode(ids[:-2]) == "<|im_start|>user\na red circle<|im_end|>\n<|im_start|>assistant\n"
    L = len(ids)
    assert torch.equal(s.position_ids[:, :L], torch.arange(L).expand(3, L))
    assert s.position_ids[:, L:].tolist() == [
        [FIX_POINT] * 6,
        [4096, 4096, 4096, 4097, 4097, 4097],
        [4096, 4097, 4098, 4096, 4097, 4098],
    ]
    assert s.token_types.tolist() == [0] * (L - 1) + [1] * 7
    assert s.vinput_mask.tolist() == [False] * L + [True] * 6
    with pytest.raises(ValueError, match="multiples of 32"):
        build_t2i(tok, "x", 64, 100)


def test_collate_pads_before_tms(tok):
    short, long = build_t2i(tok, "a star", 32, 64), build_t2i(tok, "three small green squares at the top", 32, 64)
    b = collate([short, long], pad_id=0)
    L = long.text_length
    a = short.text_length - 1
    assert b.input_ids.shape == (2, L) and b.text_lengths.tolist() == [short.text_length, L]
    assert b.input_ids[0, :a].tolist() == short.input_ids[:a].tolist()
    assert b.input_ids[0, a : L - 1].tolist() == [0] * (L - 1 - a) and b.input_ids[0, -1] == short.input_ids[-1]
    # real positions are unchanged by padding; pad rows are text type and never image rows
    assert torch.equal(b.position_ids[:, 0, L - 1 :], short.position_ids[:, a:])
    assert b.token_types[0, a : L - 1].eq(0).all() and not b.vinput_mask[0, :L].any()
    assert b.padded and not collate([long, long]).padded
    with pytest.raises(ValueError, match="one batch needs one size"):
        collate([short, build_t2i(tok, "a star", 64, 64)])


def test_multiple_references_are_placed_one_past_the_previous_grid():
    ids = [1, 2, 9, 9, 9, 9, 9, 9, 3, 7, 8]  # two vision grids: 2x2 and 1x2 (pad id 9), boi 7, tms 8
    s = layout_from_ids(ids, 64, 64, image_pad_id=9, vlm_grids=[(2, 2), (1, 2)], ref_sizes=[(32, 96), (64, 32)])
    pos = s.position_ids
    assert pos[:, :2].tolist() == [[0, 1]] * 3
    assert pos[:, 2:6].tolist() == [[2, 2, 2, 2], [2, 2, 3, 3], [2, 3, 2, 3]]
    assert pos[:, 6:8].tolist() == [[4, 4], [4, 4], [4, 5]]  # second vision grid starts one past the first
    assert pos[:, 8].tolist() == [6, 6, 6]  # text resumes one past the largest position
    tgt, r1, r2 = pos[:, 11:15], pos[:, 15:18], pos[:, 18:20]
    assert tgt.min() == 4096 and tgt.max() == 4097
    assert r1[:, 0].tolist() == [4098] * 3 and r1[2].tolist() == [4098, 4099, 4100]
    assert r2[:, 0].tolist() == [4101] * 3 and r2[1].tolist() == [4101, 4102]
    assert (s.n_image, s.n_ref) == (4, 5) and s.token_types[10:].eq(1).all()
    with pytest.raises(ValueError, match="image grids given"):
        layout_from_ids(ids, 64, 64, image_pad_id=9, vlm_grids=[(2, 2), (1, 2), (1, 1)])


def test_reference_sizes_shrink_with_count():
    assert [reference_side(k, 1024, 768) for k in (1, 2, 3, 6, 10)] == [1024, 768, 512, 384, 256]
    big = resize_to_area(Image.new("RGB", (4000, 1000)), 512)
    assert big.width % 32 == 0 and big.height % 32 == 0 and big.width * big.height <= 512 * 512
    assert abs(big.width / big.height - 4) < 0.3
    assert vision_size(384, 1.5) == (448, 288)


def test_reference_preparation_matches_official(conformance):
    case = load_file(str(conformance / "cases" / "edit_h64_w96_t0.3_cond.safetensors"))
    refs = prepare_references([case["ref_image_uint8"].numpy()], 64, 96)
    assert np.array_equal(np.asarray(refs.resized[0]), case["ref_resized_uint8"].numpy())
    assert torch.equal(refs.image_grid_thw, case["image_grid_thw"])
    assert torch.equal(refs.pixel_values.bfloat16(), case["pixel_values"])
    assert torch.equal(refs.ref_patches, case["ref_patches"][0])
    assert refs.vlm_grids == [(9, 14)] and refs.ref_sizes == [(64, 96)]


def test_edit_from_raw_image_reproduces_official_x_pred(conformance):
    """Reference preparation + layout + model, from the raw 80x48 image to the official x_pred."""
    from core.loading import load_model

    case = load_file(str(conformance / "cases" / "edit_h64_w96_t0.3_cond.safetensors"))
    refs = prepare_references([Image.fromarray(case["ref_image_uint8"].numpy())], 64, 96)
    sample = layout_from_ids(chat_ids("P4", 126), 64, 96, vlm_grids=refs.vlm_grids, ref_sizes=refs.ref_sizes)
    sample.pixel_values, sample.image_grid_thw, sample.ref_patches = (
        refs.pixel_values,
        refs.image_grid_thw,
        refs.ref_patches,
    )
    batch = collate([sample])
    target = case["vinputs"][:, :6].clone()
    model = load_model(conformance / "tiny_checkpoint")
    with torch.no_grad():
        x = model(**batch.model_inputs(batch.vinputs(target), case["timestep"].clone())).x_pred
    torch.testing.assert_close(x[batch.vinput_mask], case["x_pred_vinput"][0], atol=ATOL, rtol=RTOL)


def test_build_edit_expands_placeholders(tok):
    img = Image.fromarray((np.random.default_rng(0).random((100, 60, 3)) * 255).astype(np.uint8))
    refs = prepare_references([img, img], 64, 64)
    s = build_edit(tok, "make it blue", 64, 64, refs)
    vocab = tok.get_vocab()
    ids = s.input_ids.tolist()
    per_image = [gh * gw for gh, gw in refs.vlm_grids]
    assert ids.count(vocab["<|image_pad|>"]) == sum(per_image) == refs.pixel_values.shape[0] // 4
    assert ids.count(vocab["<|vision_start|>"]) == 2
    assert s.n_ref == refs.ref_patches.shape[0] and s.ref_patches is refs.ref_patches
    assert s.position_ids.shape[1] == len(ids) + s.n_image + s.n_ref
