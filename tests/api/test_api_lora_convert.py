"""One key grammar for reading, checking and converting: every spelling the trainer's loader reads, converted
without torch by the API to each download format, loads back through that loader on the same modules with
the same outputs (on the conformance tiny checkpoint, whose linears the API reads from safetensors headers).

    .venv/bin/python -m pytest tests/api/test_api_lora_convert.py -q
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors.torch import load_file, save

from core.loading import load_model
from core.lora import apply_loras, bind_lora, read_lora
from core.lora.check import base_index, inspect_lora
from core.lora.convert import canonical_modules, write_format, write_peft

MODULES = [
    "model.language_model.layers.0.self_attn.q_proj",
    "model.language_model.layers.1.mlp.down_proj",
    "model.final_layer2.linear",
    "model.x_embedder.proj1",
    "model.t_embedder1.mlp.0",
]


def _stem(spelling: str, path: str) -> str:
    short = path[len("model.") :]
    return {
        "peft": f"base_model.model.{path}",
        "comfyui": f"diffusion_model.{short}",
        "comfyui_full": f"model.diffusion_model.{short}",
        "ai_toolkit_legacy": f"diffusion_model.{path}",
        "transformer": f"transformer.{short}",
        "musubi": "lora_unet_" + path.replace(".", "_"),
        "musubi_short": "lora_unet_" + short.replace(".", "_"),
        "diffsynth": path,
        "bare": short,
    }[spelling]


SPELLINGS = [
    "peft",
    "comfyui",
    "comfyui_full",
    "ai_toolkit_legacy",
    "transformer",
    "musubi",
    "musubi_short",
    "diffsynth",
    "bare",
]


def original(spelling: str, index) -> bytes:
    """Random bf16 LoRA tensors of the base model's shapes, per-module ranks and (where the layout has them)
    alphas, spelled as `spelling` writes keys."""
    g = torch.Generator().manual_seed(0)
    down_s, up_s = {
        "diffsynth": ("lora_A.default.weight", "lora_B.default.weight"),
        "peft": ("lora_A.weight", "lora_B.weight"),
        "transformer": ("lora_A.weight", "lora_B.weight"),
    }.get(spelling, ("lora_down.weight", "lora_up.weight"))
    tensors = {}
    for i, path in enumerate(MODULES):
        out_f, in_f = index.linears[path]
        r, stem = 2 + i, _stem(spelling, path)
        tensors[f"{stem}.{down_s}"] = torch.randn(r, in_f, generator=g).to(torch.bfloat16)
        tensors[f"{stem}.{up_s}"] = torch.randn(out_f, r, generator=g).to(torch.bfloat16)
        if spelling not in ("diffsynth", "peft", "bare"):
            tensors[f"{stem}.alpha"] = torch.tensor(1.5 * (i + 1))
    return save(tensors)


@pytest.fixture(scope="module")
def ckpt(conformance):
    return conformance / "tiny_checkpoint"


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(ckpt)


@pytest.fixture(scope="module")
def case(conformance):
    d = load_file(str(conformance / "cases" / "t2i_h64_w64_t0.05.safetensors"))
    return {k: d[k].clone() for k in ("input_ids", "position_ids", "vinputs", "timestep", "token_types")}


@torch.no_grad()
def outputs(model, case, bound):
    with apply_loras(model, [(bound, 1.0)]):
        return model(**case).x_pred


def deltas(bound) -> dict[str, torch.Tensor]:
    return {p: up.float() @ down.float() for p, (down, up) in bound.deltas.items()}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_converts_to_every_format_with_the_same_modules_and_outputs(
    spelling, ckpt, model, case, tmp_path
):
    index = base_index(ckpt)
    data = original(spelling, index)
    (tmp_path / "orig.safetensors").write_bytes(data)
    want = bind_lora(model, read_lora(tmp_path / "orig.safetensors"), strict=True)
    assert sorted(want.deltas) == sorted(MODULES)
    want_out = outputs(model, case, want)
    with torch.no_grad():
        effect = (want_out - model(**case).x_pred).abs().max().item()  # how much the LoRA moves the output
    assert effect > 1e-2

    f = io.BytesIO(data)
    info = inspect_lora(f, len(data), index=index)
    assert info.modules == len(MODULES) and not info.unplaced
    modules = canonical_modules(f, info)
    files = {}
    for fmt in ("comfyui", "musubi", "diffsynth"):
        for dtype in (None, "fp32"):
            out = io.BytesIO()
            write_format(f, info.data_start, modules, out, fmt, dtype)
            files[f"{fmt}-{dtype}.safetensors"] = out.getvalue()
    out = io.BytesIO()
    config = write_peft(f, info.data_start, modules, out)
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "adapter_model.safetensors").write_bytes(out.getvalue())
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps(config))
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)

    for name in [*files, "peft"]:
        got = bind_lora(model, read_lora(tmp_path / name), strict=True)
        assert sorted(got.deltas) == sorted(MODULES), name
        # Exact, except DiffSynth in the source's bf16: alpha/rank folded into bf16 up weights rounds them.
        rounded = name == "diffsynth-None.safetensors"
        for p, d in deltas(got).items():
            ref = deltas(want)[p]
            torch.testing.assert_close(
                d, ref, atol=(4e-3 if rounded else 1e-6) * ref.abs().max().item(), rtol=0, msg=name
            )
        torch.testing.assert_close(
            outputs(model, case, got), want_out, atol=(2e-2 if rounded else 1e-5) * effect, rtol=0, msg=name
        )


def test_transformer_prefix_converts_to_keys_comfyui_maps(ckpt):
    """`transformer.language_model...` once became `diffusion_model.transformer.language_model...`, which
    places nothing; ai-toolkit's legacy `diffusion_model.model.*` was served unchanged, which ComfyUI maps none of."""
    index = base_index(ckpt)
    for spelling in ("transformer", "ai_toolkit_legacy"):
        data = original(spelling, index)
        f = io.BytesIO(data)
        info = inspect_lora(f, len(data), index=index)
        out = io.BytesIO()
        write_format(f, info.data_start, canonical_modules(f, info), out, "comfyui")
        keys = set(load_file_bytes(out.getvalue()))
        assert "diffusion_model.language_model.layers.0.self_attn.q_proj.lora_A.weight" in keys, spelling
        assert not any(k.startswith(("diffusion_model.transformer.", "diffusion_model.model.")) for k in keys)


def load_file_bytes(data: bytes) -> dict:
    from safetensors.torch import load

    return load(data)


def test_peft_without_alpha_gets_the_loaders_default(ckpt, tmp_path):
    index = base_index(ckpt)
    out_f, in_f = index.linears["model.final_layer2.linear"]
    data = save(
        {
            "base_model.model.model.final_layer2.linear.lora_A.weight": torch.ones(4, in_f),
            "base_model.model.model.final_layer2.linear.lora_B.weight": torch.ones(out_f, 4),
        }
    )
    f = io.BytesIO(data)
    info = inspect_lora(f, len(data), index=index)
    out = io.BytesIO()
    write_format(f, info.data_start, canonical_modules(f, info), out, "comfyui")
    (tmp_path / "c.safetensors").write_bytes(out.getvalue())
    m = read_lora(tmp_path / "c.safetensors").modules["diffusion_model.final_layer2.linear"]
    assert m.alpha is None and torch.equal(m.down, torch.ones(4, in_f))  # alpha = rank when unstated


def test_download_without_a_readable_base_model_converts_from_the_stored_comfyui_copy(ckpt, tmp_path):
    """A deployment whose API cannot read the model still serves every single-file format of a stored copy."""
    import os
    import stat

    from core.lora.convert import convert_download
    from service.store import LocalStore

    index = base_index(ckpt)
    data = original("transformer", index)
    f = io.BytesIO(data)
    info = inspect_lora(f, len(data), index=index)
    out = io.BytesIO()
    write_format(f, info.data_start, canonical_modules(f, info), out, "comfyui")
    store = LocalStore(tmp_path / "store")
    store.put_bytes("loras/x/lora.safetensors", out.getvalue())
    for fmt in ("comfyui", "musubi", "diffsynth"):
        with_base = convert_download(store, "loras/x/lora.safetensors", fmt, "fp32", index)
        without = convert_download(store, "loras/x/lora.safetensors", fmt, "fp32", None)
        assert open(with_base, "rb").read() == open(without, "rb").read(), fmt
        assert stat.S_IMODE(os.stat(without).st_mode) == 0o644
        os.unlink(with_base)
        os.unlink(without)
