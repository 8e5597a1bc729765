"""core.lora.keys: one prefix table names both where a module path starts and which writer a key comes from;
the torch-free LoRA modules (keys, check, convert) import without torch, as the API needs."""

import subprocess
import sys

import pytest

from core.lora.keys import PATH_PREFIXES, PREFIX_LAYOUTS, ModuleIndex, layout_of

PATH = "model.language_model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    "key,layout",
    [
        (f"base_model.model.{PATH}.lora_A.weight", "peft"),
        ("diffusion_model.language_model.layers.0.self_attn.q_proj.lora_A.weight", "comfyui"),
        (f"model.diffusion_model.{PATH}.lora_A.weight", "comfyui"),
        ("lora_unet_model_language_model_layers_0_self_attn_q_proj.lora_down.weight", "musubi"),
        (f"{PATH}.lora_A.default.weight", "diffsynth"),
        ("transformer.language_model.layers.0.self_attn.q_proj.lora_A.weight", "bare"),
        (f"{PATH}.lora_A.weight", "bare"),
    ],
)
def test_layout_of_reads_the_prefix_table(key, layout):
    assert layout_of(key) == layout


def test_every_prefix_of_the_table_resolves_to_the_module():
    index = ModuleIndex({PATH: (8, 8)})
    assert PATH_PREFIXES == tuple(PREFIX_LAYOUTS)
    for prefix in PATH_PREFIXES:
        short = PATH[len("model.") :]
        assert index.resolve(prefix + short) == PATH, prefix


def test_the_api_side_of_core_lora_imports_without_torch():
    code = "import sys, core.lora.keys, core.lora.check, core.lora.convert; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
