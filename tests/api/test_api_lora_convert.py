"""Imported LoRAs converted without torch read back, through the trainer's own loader (core.lora.read_lora),
as the same modules, tensors and alphas as the original file.

    .venv/bin/python -m pytest tests/api/test_api_lora_convert.py -q
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save

from api.lora_check import inspect_lora, read_header
from api.lora_convert import canonical_modules, write_comfyui, write_peft

PATHS = ["language_model.layers.0.self_attn.q_proj", "language_model.layers.1.mlp.down_proj", "final_layer2.linear"]


def original(layout: str, dtype=torch.bfloat16) -> tuple[bytes, dict[str, tuple]]:
    """A LoRA with distinct random tensors and per-module ranks/alphas; returns bytes and the truth by path."""
    g = torch.Generator().manual_seed(0)
    tensors, truth = {}, {}
    for i, path in enumerate(PATHS):
        r, alpha = 2 + i, 1.5 * (i + 1)
        down, up = torch.randn(r, 16, generator=g).to(dtype), torch.randn(24, r, generator=g).to(dtype)
        key = {"comfyui": f"diffusion_model.{path}", "diffsynth": f"model.{path}", "bare": path}[layout]
        a, b = ("lora_A.default", "lora_B.default") if layout == "diffsynth" else ("lora_down", "lora_up")
        tensors[f"{key}.{a}.weight"], tensors[f"{key}.{b}.weight"] = down, up
        tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
        truth[path] = (down, up, alpha)
    return save(tensors), truth


def by_path(lora) -> dict[str, tuple]:
    """core's LoraFile modules keyed by the canonical path (stem without layout prefix and 'model.')."""
    out = {}
    for stem, m in lora.modules.items():
        for pre in ("base_model.model.", "diffusion_model."):
            stem = stem[len(pre):] if stem.startswith(pre) else stem
        out[stem[len("model."):] if stem.startswith("model.") else stem] = (m.down, m.up, m.alpha)
    return out


@pytest.mark.parametrize("layout", ["comfyui", "diffsynth", "bare"])
def test_converted_files_read_back_identically_with_the_trainers_loader(layout, tmp_path):
    from core.lora import read_lora
    data, truth = original(layout)
    f = io.BytesIO(data)
    info = inspect_lora(f, len(data))
    header, _, start = read_header(io.BytesIO(data), len(data))
    modules = canonical_modules(f, header, start, info.format)

    comfy = io.BytesIO()
    write_comfyui(f, start, modules, comfy)
    (tmp_path / "c.safetensors").write_bytes(comfy.getvalue())
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    weights = io.BytesIO()
    config = write_peft(f, start, modules, weights)
    (peft_dir / "adapter_model.safetensors").write_bytes(weights.getvalue())
    (peft_dir / "adapter_config.json").write_text(json.dumps(config))

    for lora in (read_lora(tmp_path / "c.safetensors"), read_lora(peft_dir)):
        got = by_path(lora)
        assert sorted(got) == sorted(PATHS)
        for path, (down, up, alpha) in truth.items():
            assert torch.equal(got[path][0], down) and torch.equal(got[path][1], up)  # bytes copied exactly (bf16)
            assert got[path][2] == pytest.approx(alpha)
    assert config["r"] in (2, 3, 4) and set(config["target_modules"]) == {f"model.{p}" for p in PATHS}


def test_peft_without_alpha_gets_the_loaders_default(tmp_path):
    from core.lora import read_lora
    data = save({"base_model.model.model.final_layer2.linear.lora_A.weight": torch.ones(4, 8),
                 "base_model.model.model.final_layer2.linear.lora_B.weight": torch.ones(8, 4)})
    f = io.BytesIO(data)
    header, _, start = read_header(f, len(data))
    modules = canonical_modules(f, header, start, "peft")
    out = io.BytesIO()
    write_comfyui(f, start, modules, out)
    (tmp_path / "c.safetensors").write_bytes(out.getvalue())
    m = read_lora(tmp_path / "c.safetensors").modules["diffusion_model.final_layer2.linear"]
    assert m.alpha is None and np.array_equal(m.down.numpy(), np.ones((4, 8)))  # alpha = rank when unstated
