"""Our model and layout against the official code's goldens (../shared/conformance, tiny checkpoint)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from core.layout import collate, layout_from_ids
from core.loading import load_model

ATOL = RTOL = 1e-4
IM_START, IM_END, NL, USER, ASSISTANT = 151644, 151645, 198, 872, 77091
BOI, TMS, VSTART, VEND, IMAGE_PAD = 151669, 151673, 151652, 151653, 151655
PROMPTS = {  # the README's fixed prompt ids
    "P1": [785, 2168, 315, 264, 8251, 11699, 389, 264, 3241, 1405, 13],
    "P2": [32, 2518, 13638, 518, 42196, 13],
    "P3": [9707, 1879, 448, 2518, 1467, 323],
    "P4": [4340, 5765, 315, 264, 11958, 48342, 30],
    " ": [220],
}
T2I = [
    "t2i_h64_w64_t0.05",
    "t2i_h64_w64_t0.7",
    "t2i_h64_w96_t0.05",
    "t2i_h64_w96_t0.7",
    "t2i_h96_w64_t0.3_uncond",
    "t2i_h64_w96_batch2",
]
EDIT = ["edit_h64_w96_t0.3_cond", "edit_h64_w96_t0.3_uncond"]


def chat_ids(prompt_key: str, vlm_tokens: int = 0) -> list[int]:
    image = [VSTART] + [IMAGE_PAD] * vlm_tokens + [VEND] if vlm_tokens else []
    return [IM_START, USER, NL] + image + PROMPTS[prompt_key] + [IM_END, NL, IM_START, ASSISTANT, NL, BOI, TMS]


def read_case(conformance, name):
    path = conformance / "cases" / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    # clone: un-aligned safetensors buffers change the CPU GEMM summation order (README note)
    case = {k: v.clone() for k, v in load_file(str(path)).items()}
    if name.startswith("edit") and "pixel_values" not in case:  # the uncond file shares the cond pixels
        cond = load_file(str(conformance / "cases" / "edit_h64_w96_t0.3_cond.safetensors"))
        case["pixel_values"] = cond["pixel_values"].clone()
    return case, meta


@pytest.fixture(scope="module")
def model(conformance):
    return load_model(conformance / "tiny_checkpoint", dtype=torch.float32, device="cpu")


def inputs(case):
    kw = dict(
        input_ids=case["input_ids"],
        position_ids=case["position_ids"],
        vinputs=case["vinputs"],
        timestep=case["timestep"],
        token_types=case["token_types"],
    )
    if "pixel_values" in case:
        kw.update(pixel_values=case["pixel_values"], image_grid_thw=case["image_grid_thw"])
    return kw


@pytest.mark.parametrize("name", T2I + EDIT)
def test_forward_matches_official(model, conformance, name):
    case, _ = read_case(conformance, name)
    with torch.no_grad():
        x_pred = model(**inputs(case)).x_pred
    diff = (x_pred - case["x_pred"]).abs().max().item()
    print(f"{name}: max abs diff {diff:.3g}")
    torch.testing.assert_close(x_pred, case["x_pred"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(
        x_pred[case["vinput_mask"]], case["x_pred_vinput"].flatten(0, 1), atol=ATOL, rtol=RTOL
    )


@pytest.mark.parametrize("name", T2I)
def test_t2i_layout_matches_official(conformance, name):
    case, meta = read_case(conformance, name)
    h, w = int(meta["height"]), int(meta["width"])
    samples = []
    for key in json.loads(meta["prompt_keys"]):
        ids = chat_ids(key)
        samples.append(layout_from_ids(ids, h, w))
    batch = collate(samples)
    assert torch.equal(batch.input_ids, case["input_ids"])
    assert torch.equal(batch.position_ids, case["position_ids"])
    assert torch.equal(batch.token_types, case["token_types"])
    assert torch.equal(batch.vinput_mask, case["vinput_mask"])
    assert not batch.padded


@pytest.mark.parametrize("name", EDIT)
def test_edit_layout_matches_official(conformance, name):
    case, meta = read_case(conformance, name)
    h, w = int(meta["height"]), int(meta["width"])
    t, gh, gw = case["image_grid_thw"][0].tolist()
    merged = (gh // 2, gw // 2)
    sample = layout_from_ids(
        chat_ids(meta["prompt_key"], merged[0] * merged[1]), h, w, vlm_grids=[merged], ref_sizes=[(64, 96)]
    )
    assert torch.equal(sample.input_ids, case["input_ids"][0])
    assert torch.equal(sample.position_ids, case["position_ids"][:, 0])
    assert torch.equal(sample.token_types, case["token_types"][0])
    assert torch.equal(sample.vinput_mask, case["vinput_mask"][0])
    assert (sample.n_image, sample.n_ref) == (6, 6)


def test_vision_features_match_official(model, conformance):
    case, _ = read_case(conformance, "edit_h64_w96_t0.3_cond")
    with torch.no_grad():
        embeds, deepstack = model.vision_features(case["pixel_values"], case["image_grid_thw"])
    torch.testing.assert_close(embeds, case["cond_image_embeds"], atol=ATOL, rtol=RTOL)
    assert len(deepstack) == 1
    torch.testing.assert_close(deepstack[0], case["cond_deepstack_image_embeds_0"], atol=ATOL, rtol=RTOL)
