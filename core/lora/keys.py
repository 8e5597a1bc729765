"""The key grammar of LoRA files in the wild, torch-free so that the API can check and convert uploads with it.

One grammar drives reading (core.lora.formats), checking (core.lora.check) and converting (core.lora.convert):

    split_key("diffusion_model.language_model.layers.0.mlp.up_proj.lora_A.weight")
        -> ("diffusion_model.language_model.layers.0.mlp.up_proj", "down")
    index = ModuleIndex({"model.language_model.layers.0.mlp.up_proj": (1024, 384), ...})   # path -> (out, in)
    index.resolve("transformer.language_model.layers.0.mlp.up_proj")
        -> "model.language_model.layers.0.mlp.up_proj"
    write_key("musubi", "model.final_layer2.linear", "down")
        -> "lora_unet_model_final_layer2_linear.lora_down.weight"

A module path is the model's own (state-dict) path of an nn.Linear, "model.language_model.layers.0..." etc.
"""

from __future__ import annotations

import re

# Suffix -> role. Longer suffixes first so ".lora_A.default.weight" is not read as ".weight" junk.
ROLES = (
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),  # older kohya / diffusers
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".alpha", "alpha"),
)
UNDERSCORE_PREFIXES = ("lora_unet_", "lora_transformer_")  # musubi-tuner / kohya: dots written as "_"
# The one prefix table: what writers put before the model's own module path, tried in order, and the layout
# each prefix names ("bare" decides nothing: diffsynth is told by its suffix). "model." is then added if
# needed (ComfyUI drops it; ai-toolkit's legacy files keep it after "diffusion_model.").
PREFIX_LAYOUTS = {
    "base_model.model.": "peft",
    "model.diffusion_model.": "comfyui",
    "diffusion_model.": "comfyui",
    "transformer.": "bare",
    "": "bare",
}
PATH_PREFIXES = tuple(PREFIX_LAYOUTS)
# Entries some writers add that are not low-rank pairs; each gets a reason instead of silence.
NOT_LORA = (
    (re.compile(r"\.diff(_b)?$"), "a full weight difference (.diff / .diff_b), which this service does not apply"),
    (re.compile(r"\.dora_scale$"), "a DoRA magnitude, which this service does not apply"),
)
TEXT_ENCODER = re.compile(r"^(lora_te\d*_|text_encoder|te\d?\.|lora_te\.)")
NOT_LINEAR = re.compile(r"(embed_tokens|pos_embed|patch_embed\.proj|lm_head)$")


def split_key(key: str) -> tuple[str, str] | None:
    """(stem, role) with role "down" / "up" / "alpha", or None for a key that is not part of a LoRA pair."""
    for suffix, role in ROLES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def not_lora_reason(key: str) -> str:
    """Why a key that split_key does not read is left out."""
    for rx, why in NOT_LORA:
        if rx.search(key):
            return why
    return "not a LoRA tensor"


def layout_of(key: str) -> str:
    """Which writer a key's spelling comes from: peft, comfyui, musubi, diffsynth or bare."""
    for prefix, layout in PREFIX_LAYOUTS.items():
        if layout != "bare" and key.startswith(prefix):
            return layout
    if key.startswith(UNDERSCORE_PREFIXES):
        return "musubi"
    if ".default.weight" in key:
        return "diffsynth"
    return "bare"


class ModuleIndex:
    """The linears of one base model, path -> (out_features, in_features), and how key stems name them."""

    def __init__(self, linears: dict[str, tuple[int, int]]):
        self.linears = dict(linears)
        self.underscored: dict[str, str] = {}
        for n in self.linears:
            self.underscored[n.replace(".", "_")] = n
            if n.startswith("model."):
                self.underscored[n[len("model.") :].replace(".", "_")] = n

    def resolve(self, stem: str) -> str | None:
        """The module path a key stem names, or None."""
        for pre in UNDERSCORE_PREFIXES:
            if stem.startswith(pre):
                return self.underscored.get(stem[len(pre) :])
        for pre in PATH_PREFIXES:
            if not stem.startswith(pre):
                continue
            rest = stem[len(pre) :]
            # One more writer prefix may follow: "diffusion_model.transformer.<path>" is what this service's
            # ComfyUI conversion wrote for `transformer.*` files before this grammar drove it.
            inner = [rest[len(p2) :] for p2 in PATH_PREFIXES[:-1] if pre and rest.startswith(p2)]
            for p in (rest, *inner):
                for cand in (p, "model." + p):
                    if cand in self.linears:
                        return cand
        return None

    def why_not(self, stem: str) -> str:
        """The reason a stem resolves to nothing, for messages."""
        if TEXT_ENCODER.search(stem):
            return "a text-encoder module (HiDream-O1 has none to adapt)"
        if NOT_LINEAR.search(stem):
            return "not a linear module of HiDream-O1 (an embedding or a convolution)"
        return "no such linear module in HiDream-O1"


# How each download format spells a module path's keys (the path is the model's own, "model.<...>").
FORMATS = ("comfyui", "peft", "musubi", "diffsynth")


def write_key(fmt: str, path: str, role: str) -> str:
    """The key `fmt` gives role "down" / "up" / "alpha" of module `path`.

    comfyui:   diffusion_model.<path without "model.">.lora_A/.lora_B.weight, scalar .alpha
    peft:      base_model.model.<path>.lora_A/.lora_B.weight (alpha lives in adapter_config.json)
    musubi:    lora_unet_<path with "." -> "_">.lora_down/.lora_up.weight, scalar .alpha (musubi-tuner names
               modules from its Qwen3VLForConditionalGeneration root, so the path keeps "model.")
    diffsynth: <path>.lora_A/.lora_B.default.weight, no alpha (DiffSynth-Studio applies up @ down as is)
    """
    short = path[len("model.") :] if path.startswith("model.") else path
    if fmt == "comfyui":
        suffix = {"down": "lora_A.weight", "up": "lora_B.weight", "alpha": "alpha"}[role]
        return f"diffusion_model.{short}.{suffix}"
    if fmt == "peft":
        return f"base_model.model.{path}." + {"down": "lora_A.weight", "up": "lora_B.weight"}[role]
    if fmt == "musubi":
        stem = "lora_unet_" + path.replace(".", "_")
        return f"{stem}." + {"down": "lora_down.weight", "up": "lora_up.weight", "alpha": "alpha"}[role]
    if fmt == "diffsynth":
        return f"{path}." + {"down": "lora_A.default.weight", "up": "lora_B.default.weight"}[role]
    raise ValueError(f"unknown LoRA format {fmt!r}; known: {', '.join(FORMATS)}")


def carries_alpha(fmt: str) -> bool:
    """Whether a format stores alpha per module (else alpha/rank is folded into the up weights on writing)."""
    return fmt in ("comfyui", "musubi")
