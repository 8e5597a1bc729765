"""Write a trained adapter as a PEFT folder, or as one safetensors file in the layout another tool loads.

    save_peft_folder(adapter, spec, "out/lora", metadata)      # adapter_config.json + adapter_model.safetensors
    save_comfyui_file(adapter, spec, "out/lora.safetensors", metadata)          # the trainer's full-precision copy
    save_lora_file(adapter, spec, "style.safetensors", "musubi")                # bf16 unless dtype= says otherwise

Formats and their key names are core.lora.keys.write_key's (comfyui, musubi, diffsynth); files are readable
by other users (0644), as files other tools load must be.

`adapter` is core.lora.adapter_state_dict(model): {"model.<path>.lora_A.weight": [r, in], ...lora_B: [out, r]}.
Both files are written to a temp name and renamed, so a reader never sees half a file. Metadata values
are strings (a safetensors rule); `training` is JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from core.atomic_files import atomic_file
from core.lora.inject import LoraSpec
from core.lora.keys import carries_alpha, write_key

FILE_MODE = 0o644  # mkstemp creates 0600; a LoRA is handed to other programs and users

# Config fields that name a machine or a library version rather than the architecture and weights layout.
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures")


def config_hash(config) -> str:
    """sha256 of the base model's config (as sorted JSON, volatile fields removed): ties a LoRA to its base."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in _VOLATILE_CONFIG_KEYS}
        return x

    return hashlib.sha256(json.dumps(clean(d), sort_keys=True, default=str).encode()).hexdigest()


def build_metadata(
    *, trigger: str, spec: LoraSpec, steps: int, resolution: int, base_model: str, base_config, training: dict
) -> dict[str, str]:
    """The sidecar facts every exported file carries."""
    return {
        "format": "pt",
        "o1lora.trigger": trigger,
        "o1lora.rank": str(spec.rank),
        "o1lora.alpha": str(spec.alpha),
        "o1lora.steps": str(steps),
        "o1lora.resolution": str(resolution),
        "o1lora.base_model": base_model,
        "o1lora.base_config_sha256": config_hash(base_config),
        "o1lora.targets": spec.pattern,
        "o1lora.training": json.dumps(training, sort_keys=True, default=str),
    }


def _check_adapter(adapter: dict[str, torch.Tensor]) -> None:
    bad = [k for k in adapter if not (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight"))]
    if bad or not adapter:
        raise ValueError(
            f"not an adapter state dict (want *.lora_A.weight / *.lora_B.weight): {bad[:3] or 'empty'}"
        )


def _contiguous_cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    with atomic_file(path, mode=FILE_MODE) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_peft_folder(
    adapter: dict[str, torch.Tensor],
    spec: LoraSpec,
    folder: str | Path,
    metadata: dict[str, str] | None = None,
    base_model: str = "",
) -> Path:
    """A folder that peft.PeftModel.from_pretrained (and core.lora.read_lora) loads."""
    _check_adapter(adapter)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"base_model.model." + k: _contiguous_cpu(v) for k, v in adapter.items()}
    _atomic_save(tensors, folder / "adapter_model.safetensors", dict(metadata or {"format": "pt"}))
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "bias": "none",
        "target_modules": spec.pattern,
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
    }
    with atomic_file(folder / "adapter_config.json", mode=FILE_MODE) as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    return folder


def comfyui_tensors(adapter: dict[str, torch.Tensor], spec: LoraSpec) -> dict[str, torch.Tensor]:
    """diffusion_model.<path without "model.">.lora_A/.lora_B.weight + a scalar .alpha per module."""
    _check_adapter(adapter)
    out: dict[str, torch.Tensor] = {}
    for k, v in adapter.items():
        if not k.startswith("model."):
            raise ValueError(f"{k}: adapter keys must be model paths starting with 'model.'")
        key = "diffusion_model." + k[len("model.") :]
        out[key] = _contiguous_cpu(v)
        stem = key.rsplit(".lora_", 1)[0]
        out[stem + ".alpha"] = torch.tensor(float(spec.alpha), dtype=torch.float32)
    return out


def save_comfyui_file(
    adapter: dict[str, torch.Tensor], spec: LoraSpec, path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    path = Path(path)
    _atomic_save(comfyui_tensors(adapter, spec), path, dict(metadata or {"format": "pt"}))
    return path


def lora_file_tensors(
    adapter: dict[str, torch.Tensor], spec: LoraSpec, fmt: str, dtype: torch.dtype | None = torch.bfloat16
) -> dict[str, torch.Tensor]:
    """The adapter keyed as `fmt` writes it, weights in `dtype` (None: as trained). Formats without a
    per-module alpha get alpha/rank folded into the up weights, so every format gives the same delta."""
    _check_adapter(adapter)
    out: dict[str, torch.Tensor] = {}
    for k, v in adapter.items():
        path, role = k.rsplit(".lora_", 1)
        if not path.startswith("model."):
            raise ValueError(f"{k}: adapter keys must be model paths starting with 'model.'")
        t = v.detach().to("cpu", torch.float32)
        if role.startswith("B") and not carries_alpha(fmt):
            t = t * (float(spec.alpha) / spec.rank)
        out[write_key(fmt, path, "down" if role.startswith("A") else "up")] = t.to(dtype or v.dtype).contiguous()
        if carries_alpha(fmt):
            out[write_key(fmt, path, "alpha")] = torch.tensor(float(spec.alpha), dtype=torch.float32)
    return out


def save_lora_file(
    adapter: dict[str, torch.Tensor],
    spec: LoraSpec,
    path: str | Path,
    fmt: str = "comfyui",
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = torch.bfloat16,
) -> Path:
    """One safetensors file for ComfyUI, musubi-tuner or DiffSynth-Studio (bf16 by default, as they write)."""
    if fmt == "peft":
        raise ValueError("a PEFT LoRA is a folder: use save_peft_folder")
    path = Path(path)
    _atomic_save(lora_file_tensors(adapter, spec, fmt, dtype), path, dict(metadata or {"format": "pt"}))
    return path
