"""The key grammar of LoRA files in the wild, torch-free so that the API can check an upload with it.

core.lora.formats (the loader, with torch) and api.lora_check (the upload check, without) both read
keys through these two names, so the API accepts exactly the files the loader can read.
"""
from __future__ import annotations

# Suffix -> role. Longer suffixes first so ".lora_A.default.weight" is not read as ".weight" junk.
ROLES = (
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),                  # older kohya / diffusers
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".alpha", "alpha"),
)
UNDERSCORE_PREFIXES = ("lora_unet_", "lora_transformer_")   # musubi-tuner / kohya: dots written as "_"


def layout_of(key: str) -> str:
    """Which writer a key's spelling comes from: peft, comfyui, musubi, diffsynth or bare."""
    if key.startswith("base_model.model."):
        return "peft"
    if key.startswith(("diffusion_model.", "model.diffusion_model.")):
        return "comfyui"
    if key.startswith(UNDERSCORE_PREFIXES):
        return "musubi"
    if ".default.weight" in key:
        return "diffsynth"
    return "bare"
