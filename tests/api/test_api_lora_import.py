"""LoRA imports that cannot work are refused at the door (422 naming the first bad key, nothing stored), checked
against the configured base model (models/o1-shapes: hidden 384) with the loader's own key grammar:
another model's shapes, NaN weights, SDXL text-encoder keys, a Qwen3 language-model adapter, ComfyUI
`LoraSave` diffs and embedding LoRAs; a file that fits in part only with allow_partial=true.

    .venv/bin/python -m pytest tests/api/test_api_lora_import.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
from api_helpers import auth, db_counts, store_files
from safetensors.numpy import load, save

Q = "language_model.layers.0.self_attn.q_proj"  # 384 x 384 in models/o1-shapes
K = "language_model.layers.1.self_attn.k_proj"  # 128 x 384


def pair(stem: str, out_f: int, in_f: int, r: int = 4, value: float = 0.01, a="lora_A", b="lora_B") -> dict:
    return {
        f"{stem}.{a}.weight": np.full((r, in_f), value, np.float32),
        f"{stem}.{b}.weight": np.full((out_f, r), value, np.float32),
    }


def fits() -> dict:
    return pair(f"diffusion_model.{Q}", 384, 384)


def other_shapes() -> bytes:  # the right names, a wider model's shapes (a LoRA for the full-size HiDream-O1)
    return save(pair(f"diffusion_model.{Q}", 4096, 4096) | pair(f"diffusion_model.{K}", 1024, 4096))


def nan_weights() -> bytes:
    t = fits()
    t[f"diffusion_model.{Q}.lora_B.weight"][3, 1] = np.nan
    return save(t)


def inf_alpha() -> bytes:
    return save(fits() | {f"diffusion_model.{Q}.alpha": np.array(np.inf, np.float32)})


def sdxl_kohya() -> bytes:  # an SDXL LoRA: UNet blocks and both text encoders, none of them HiDream-O1's
    return save(
        pair(
            "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
            640,
            640,
            a="lora_down",
            b="lora_up",
        )
        | pair("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, a="lora_down", b="lora_up")
        | pair("lora_te2_text_model_encoder_layers_0_mlp_fc1", 5120, 1280, a="lora_down", b="lora_up")
    )


def qwen3_lm_adapter() -> (
    bytes
):  # a PEFT adapter of a plain Qwen3 language model: model.layers.*, no language_model
    return save(
        pair("base_model.model.model.layers.0.self_attn.q_proj", 384, 384)
        | pair("base_model.model.model.layers.0.mlp.down_proj", 384, 1024)
    )


def comfy_lora_save() -> bytes:  # what ComfyUI's LoraSave writes besides LoRA pairs
    return save(
        fits()
        | {
            "diffusion_model.language_model.norm.diff": np.zeros(384, np.float32),
            "diffusion_model.final_layer2.linear.diff_b": np.zeros(3072, np.float32),
        }
        | pair("diffusion_model.language_model.embed_tokens", 576, 384, a="lora_down", b="lora_up")
    )


def partly_fits() -> bytes:
    return save(fits() | pair(f"diffusion_model.{K}", 384, 384))  # k_proj is 128 x 384 here


REFUSED = [
    ("another model's shapes", other_shapes(), "language_model.layers.", "another model"),
    ("NaN weights", nan_weights(), f"{Q}: its up weights hold NaN", "NaN"),
    ("infinite alpha", inf_alpha(), f"{Q}: its alpha weights hold NaN or infinite", "infinite"),
    (
        "SDXL kohya",
        sdxl_kohya(),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj: a text-encoder module",
        "not HiDream-O1 modules",
    ),
    ("Qwen3 LM adapter", qwen3_lm_adapter(), "base_model.model.model.layers.0", "none of its 2"),
    ("ComfyUI LoraSave diffs", comfy_lora_save(), "language_model.norm.diff", "full weight difference"),
    ("partly fits", partly_fits(), K, "allow_partial=true"),
]


@pytest.mark.parametrize("case, data, key, message", REFUSED, ids=[c[0] for c in REFUSED])
def test_imports_that_cannot_work_are_refused_naming_the_key(
    client, alice, Session, settings, case, data, key, message
):
    before = (db_counts(Session), store_files(settings))
    r = client.post(
        "/v1/loras", headers=auth(alice), files={"file": ("x.safetensors", data, "application/octet-stream")}
    )
    assert r.status_code == 422, (case, r.text)
    assert key in r.text and message in r.text, (case, r.text)
    assert str(settings.model_path) not in r.text and str(settings.data_dir) not in r.text  # no server paths
    assert (db_counts(Session), store_files(settings)) == before


def test_the_lora_save_file_names_every_entry_it_cannot_apply(client, alice):
    r = client.post(
        "/v1/loras",
        headers=auth(alice),
        files={"file": ("x.safetensors", comfy_lora_save(), "application/octet-stream")},
    )
    assert r.status_code == 422
    assert "3 of its entries cannot be applied" in r.text
    for key in ("norm.diff", "final_layer2.linear.diff_b", "embed_tokens"):
        assert key in r.text, key


def test_allow_partial_keeps_what_fits_and_lists_the_rest(client, alice):
    r = client.post(
        "/v1/loras",
        headers=auth(alice),
        data={"allow_partial": "true"},
        files={"file": ("p.safetensors", partly_fits(), "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    lora = r.json()
    assert lora["metadata"]["unplaced_count"] == 1 and K in lora["metadata"]["unplaced"][0]
    comfy = load(client.get(lora["downloads"]["comfyui"] + "&dtype=fp32", headers=auth(alice)).content)
    assert sorted(comfy) == [f"diffusion_model.{Q}.lora_A.weight", f"diffusion_model.{Q}.lora_B.weight"]
    whole = client.post(
        "/v1/loras",
        headers=auth(alice),
        data={"allow_partial": "true"},
        files={"file": ("o.safetensors", other_shapes(), "application/octet-stream")},
    )
    assert whole.status_code == 422 and "none of its 2" in whole.text  # nothing fits: refused all the same


def test_musubi_and_diffsynth_downloads_carry_each_tools_key_names_and_alpha(client, alice):
    """musubi-tuner: lora_unet_<path with "_">.lora_down/.lora_up.weight + .alpha (it names modules from its
    Qwen3VLForConditionalGeneration root, so the path keeps "model."); DiffSynth-Studio:
    model.<path>.lora_A/.lora_B.default.weight, no alpha (alpha/rank folded into lora_B)."""
    t = fits() | {f"diffusion_model.{Q}.alpha": np.array(2.0, np.float32)}  # scale 2 / 4
    lora = client.post(
        "/v1/loras", headers=auth(alice), files={"file": ("s.safetensors", save(t), "application/octet-stream")}
    ).json()
    musubi = load(client.get(lora["downloads"]["musubi"] + "&dtype=fp32", headers=auth(alice)).content)
    stem = "lora_unet_model_" + Q.replace(".", "_")
    assert sorted(musubi) == [f"{stem}.alpha", f"{stem}.lora_down.weight", f"{stem}.lora_up.weight"]
    assert float(musubi[f"{stem}.alpha"]) == 2.0
    diffsynth = load(client.get(lora["downloads"]["diffsynth"] + "&dtype=fp32", headers=auth(alice)).content)
    assert sorted(diffsynth) == [f"model.{Q}.lora_A.default.weight", f"model.{Q}.lora_B.default.weight"]
    np.testing.assert_allclose(diffsynth[f"model.{Q}.lora_B.default.weight"], 0.01 * 2.0 / 4, rtol=1e-6)
    r = client.get(lora["downloads"]["diffsynth"], headers=auth(alice))  # default dtype: bf16
    assert r.status_code == 200 and b'"dtype":"BF16"' in r.content[:2000]
    assert len(r.content) < len(
        client.get(lora["downloads"]["diffsynth"] + "&dtype=fp32", headers=auth(alice)).content
    )
