"""Torch-free conversion of an imported LoRA to the two download formats, by rewriting the safetensors header.

Tensor bytes are copied unchanged (any dtype, bf16 included); only key names change, and alpha moves between
ComfyUI's per-module ``.alpha`` scalars and PEFT's adapter_config.json. Every layout whose keys carry the
module path with dots converts (PEFT, ComfyUI, DiffSynth, bare); musubi-tuner's underscored names need the
model's module list to be read back, so those LoRAs download as the original file only.

    modules = canonical_modules(header, layout, peft_config)   # "language_model.layers.0.self_attn.q_proj" -> ...
    write_comfyui(src, data_start, modules, out)               # diffusion_model.<path>.lora_A/B.weight + .alpha
    config = write_peft(src, data_start, modules, out)          # base_model.model.model.<path>.lora_A/B.weight
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from api.lora_check import ROLES, _scalar


class NotConvertible(ValueError):
    pass


@dataclass
class Module:
    down: dict[str, Any]       # header entries (dtype, shape, data_offsets) of the original file
    up: dict[str, Any]
    alpha: float | None        # None: the loader's default (alpha = rank)


_PREFIXES = {"peft": ("base_model.model.",), "comfyui": ("model.diffusion_model.", "diffusion_model."),
             "diffsynth": (), "bare": ()}


def _canonical(stem: str, layout: str) -> str:
    for pre in _PREFIXES[layout]:
        if stem.startswith(pre):
            stem = stem[len(pre):]
            break
    # HiDreamO1's own modules live under "model."; the canonical path is relative to it (ComfyUI's convention).
    return stem[len("model."):] if stem.startswith("model.") else stem


def canonical_modules(f: BinaryIO, header: dict[str, dict[str, Any]], data_start: int, layout: str,
                      peft_config: dict[str, Any] | None = None) -> dict[str, Module]:
    if layout not in _PREFIXES:
        raise NotConvertible(f"{layout} LoRAs are kept as uploaded only")
    if peft_config and (peft_config.get("rank_pattern") or peft_config.get("alpha_pattern")
                        or peft_config.get("use_rslora") or peft_config.get("use_dora")):
        raise NotConvertible("PEFT configs with rank/alpha patterns, rsLoRA or DoRA are kept as uploaded only")
    roles: dict[str, dict[str, Any]] = {}
    for key, entry in header.items():
        hit = next(((s, r) for s, r in ROLES if key.endswith(s)), None)
        if hit is not None:
            roles.setdefault(_canonical(key[: -len(hit[0])], layout), {})[hit[1]] = entry
    config_alpha = float(peft_config["lora_alpha"]) if peft_config and "lora_alpha" in peft_config else None
    modules = {}
    for path, r in roles.items():
        if "down" not in r or "up" not in r:
            raise NotConvertible(f"{path}: incomplete LoRA pair")
        alpha = _scalar(f, data_start, r["alpha"]) if "alpha" in r else config_alpha
        modules[path] = Module(r["down"], r["up"], alpha)
    return modules


def _write(out: BinaryIO, src: BinaryIO, data_start: int, items: list[tuple[str, dict | float]],
           metadata: dict[str, str]) -> None:
    """items: (key, original header entry to copy) or (key, float scalar to write as F32)."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, what in items:
        if isinstance(what, dict):
            size = what["data_offsets"][1] - what["data_offsets"][0]
            header[key] = {"dtype": what["dtype"], "shape": what["shape"], "data_offsets": [offset, offset + size]}
        else:
            size = 4
            header[key] = {"dtype": "F32", "shape": [], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data start to 8 bytes
    out.write(struct.pack("<Q", len(raw)) + raw)
    for _, what in items:
        if isinstance(what, dict):
            a, b = what["data_offsets"]
            src.seek(data_start + a)
            left = b - a
            while left:
                block = src.read(min(left, 1 << 20))
                if not block:
                    raise NotConvertible("the file ends before its last tensor")
                out.write(block)
                left -= len(block)
        else:
            out.write(struct.pack("<f", what))


def write_comfyui(src: BinaryIO, data_start: int, modules: dict[str, Module], out: BinaryIO,
                  metadata: dict[str, str] | None = None) -> None:
    items: list[tuple[str, dict | float]] = []
    for path, m in sorted(modules.items()):
        items += [(f"diffusion_model.{path}.lora_A.weight", m.down), (f"diffusion_model.{path}.lora_B.weight", m.up)]
        if m.alpha is not None:
            items.append((f"diffusion_model.{path}.alpha", float(m.alpha)))
    _write(out, src, data_start, items, metadata or {})


def write_peft(src: BinaryIO, data_start: int, modules: dict[str, Module], out: BinaryIO,
               metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Write adapter_model.safetensors to ``out``; returns its adapter_config.json (per-module rank/alpha as
    PEFT patterns where they differ from the most common value)."""
    items: list[tuple[str, dict | float]] = []
    ranks, alphas = {}, {}
    for path, m in sorted(modules.items()):
        items += [(f"base_model.model.model.{path}.lora_A.weight", m.down),
                  (f"base_model.model.model.{path}.lora_B.weight", m.up)]
        ranks[path] = m.down["shape"][0]
        alphas[path] = float(m.alpha) if m.alpha is not None else float(ranks[path])  # PEFT has no "unset"
    _write(out, src, data_start, items, {**(metadata or {}), "format": "pt"})
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    return {"peft_type": "LORA", "r": r, "lora_alpha": alpha,
            # Full paths, not leaf names: "q_proj" alone would also match modules the LoRA never touched.
            "target_modules": [f"model.{p}" for p in sorted(modules)],
            "rank_pattern": {f"model.{p}": v for p, v in ranks.items() if v != r},
            "alpha_pattern": {f"model.{p}": v for p, v in alphas.items() if v != alpha},
            "bias": "none", "lora_dropout": 0.0, "use_rslora": False}
