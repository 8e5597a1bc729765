"""Read a LoRA file in any of the layouts found in the wild and place its tensors on model modules.

    lora = read_lora("style.safetensors")          # or a PEFT folder, or a {key: tensor} dict
    bound = bind_lora(model, lora)                  # -> BoundLora; bound.unplaced lists what did not fit

Layouts (the key of one module, `<path>` = "language_model.layers.0.self_attn.q_proj" etc.):
    PEFT folder     base_model.model.model.<path>.lora_A.weight / .lora_B.weight  (+ adapter_config.json)
    ComfyUI         diffusion_model.<path>.lora_A.weight / .lora_B.weight, or .lora_down / .lora_up, + .alpha
    ai-toolkit      diffusion_model.model.<path>... (legacy), transformer.<path>...
    musubi-tuner    lora_unet_model_<path with "." -> "_">.lora_down.weight / .lora_up.weight / .alpha
    DiffSynth       model.<path>.lora_A.default.weight / .lora_B.default.weight
    bare            <path>.lora_A.weight ... (e.g. language_model.* / final_layer2.*)
Every layout reduces to (module stem, down [r, in], up [out, r], alpha or None); the stem is placed by
core.lora.keys (the grammar the API's upload check and converter use too). The delta a module gets is
scale * (alpha / r) * up @ down, with alpha = r when a file gives none (PEFT's default). Entries that
cannot be used (.diff full differences, embedding LoRAs, other models' modules or shapes, NaN weights)
are listed in BoundLora.unplaced with the reason, never dropped silently.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from core.lora.keys import ModuleIndex, layout_of, not_lora_reason, split_key


@dataclass
class LoraModule:
    down: torch.Tensor | None = None  # [r, in]  (PEFT lora_A)
    up: torch.Tensor | None = None  # [out, r] (PEFT lora_B)
    alpha: float | None = None


@dataclass
class LoraFile:
    """A LoRA read from disk, not yet tied to a model."""

    source: str
    layout: str  # "peft", "comfyui", "musubi", "diffsynth", "bare", "mixed"
    modules: dict[str, LoraModule]  # stem (key without role suffix) -> tensors
    metadata: dict[str, str] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)  # keys with no LoRA role (dora_scale, diff, ...)


@dataclass
class BoundLora:
    """A LoRA placed on a model: module path -> (down [r, in], up [out, r] with alpha/r folded in)."""

    name: str
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor]]
    unplaced: list[str]  # "key: reason" for everything that could not be used
    metadata: dict[str, str] = field(default_factory=dict)


def _peft_alpha(cfg: dict, stem: str, rank: int) -> float | None:
    """The alpha PEFT would use for one module: alpha_pattern over lora_alpha; rsLoRA's alpha/sqrt(r)
    scale expressed as the alpha that gives it under our alpha/r rule."""
    alpha = cfg.get("lora_alpha")
    for pat, a in (cfg.get("alpha_pattern") or {}).items():  # PEFT matches patterns at the path's end
        if re.match(rf"(.*\.)?({pat})$", stem):
            alpha = a
            break
    if alpha is None:
        return None
    return float(alpha) * math.sqrt(rank) if cfg.get("use_rslora") else float(alpha)


def read_lora(src: str | Path | dict[str, torch.Tensor], name: str | None = None) -> LoraFile:
    """Parse a .safetensors file, a PEFT folder (or its adapter_model.safetensors), or a state dict."""
    metadata: dict[str, str] = {}
    peft_cfg: dict | None = None
    if isinstance(src, dict):
        tensors, source = dict(src), name or "<state dict>"
    else:
        path = Path(src)
        if path.is_dir():
            cfg_path, path = path / "adapter_config.json", path / "adapter_model.safetensors"
        else:
            cfg_path = path.parent / "adapter_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"LoRA file not found: {path}")
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: only .safetensors LoRA files are read (pickle files can run code)")
        if cfg_path.is_file() and path.name == "adapter_model.safetensors":
            peft_cfg = json.loads(cfg_path.read_text())
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types; say which file
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
        source = str(path)

    modules: dict[str, LoraModule] = {}
    unknown: list[str] = []
    layouts: set[str] = set()
    for key, t in tensors.items():
        hit = split_key(key)
        if hit is None:
            unknown.append(key)
            continue
        stem, role = hit
        m = modules.setdefault(stem, LoraModule())
        if role == "alpha":
            m.alpha = float(t.float().reshape(-1)[0])
        else:
            setattr(m, role, t)
            layouts.add(layout_of(key))  # a bare ".alpha" says nothing about the writer
    if not modules:
        raise ValueError(
            f"{source}: no LoRA tensors found (expected keys ending in .lora_A/.lora_B/.lora_down/.lora_up)"
        )

    if peft_cfg is not None:
        for stem, m in modules.items():
            if m.alpha is None and m.down is not None:
                m.alpha = _peft_alpha(peft_cfg, stem, m.down.shape[0])
    layout = layouts.pop() if len(layouts) == 1 else "mixed"
    return LoraFile(source=source, layout=layout, modules=modules, metadata=metadata, unknown_keys=unknown)


def module_index(model: nn.Module) -> tuple[dict[str, nn.Linear], ModuleIndex]:
    """The model's linears by path, and the torch-free index the key grammar resolves stems against."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return linears, ModuleIndex({n: (m.out_features, m.in_features) for n, m in linears.items()})


def bind_lora(
    model: nn.Module,
    lora: LoraFile | str | Path,
    *,
    name: str | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    strict: bool = False,
) -> BoundLora:
    """Place a LoRA's tensors on `model`'s linears, fold alpha/r into `up`, move to the model's device/dtype.

    Anything that cannot be used (unknown module, missing half, wrong shape, unknown key) is listed in
    `unplaced`; with strict=True that list is an error instead.
    """
    if not isinstance(lora, LoraFile):
        lora = read_lora(lora)
    linears, index = module_index(model)
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    unplaced = [f"{k}: {not_lora_reason(k)}" for k in lora.unknown_keys]
    for stem, m in lora.modules.items():
        target = index.resolve(stem)
        if target is None:
            unplaced.append(f"{stem}: {index.why_not(stem)}")
            continue
        if m.down is None or m.up is None:
            unplaced.append(f"{stem}: has only {'up' if m.down is None else 'down'} weights")
            continue
        lin = linears[target]
        down, up = m.down.reshape(m.down.shape[0], -1), m.up.reshape(m.up.shape[0], -1)
        r = down.shape[0]
        if down.shape[1] != lin.in_features or up.shape != (lin.out_features, r):
            unplaced.append(
                f"{stem}: shapes down {tuple(down.shape)} / up {tuple(up.shape)} do not fit "
                f"{target} ({lin.out_features} x {lin.in_features})"
            )
            continue
        if not (torch.isfinite(down).all() and torch.isfinite(up).all()):
            unplaced.append(f"{stem}: has NaN or infinite weights")
            continue
        if target in deltas:
            unplaced.append(f"{stem}: a second entry for {target}")
            continue
        factor = (m.alpha if m.alpha is not None else r) / r
        w = lin.weight
        # an fp8 linear (core.fp8) adds its LoRA delta in its compute dtype, never in float8
        dt, dev = dtype or getattr(lin, "compute_dtype", w.dtype), device or w.device
        deltas[target] = (
            down.to(device=dev, dtype=dt).contiguous(),
            (up.float() * factor).to(device=dev, dtype=dt).contiguous(),
        )
    if strict and unplaced:
        raise ValueError(f"{lora.source}: {len(unplaced)} LoRA keys cannot be placed: {unplaced[:5]}")
    if not deltas:
        raise ValueError(
            f"{lora.source}: none of its {len(lora.modules)} LoRA modules fit this model: {unplaced[:3]}"
        )
    return BoundLora(name=name or lora.source, deltas=deltas, unplaced=unplaced, metadata=lora.metadata)
