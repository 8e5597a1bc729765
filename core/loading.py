"""Load HiDream-O1 checkpoints without ever holding two copies of the weights in host RAM.

    python -m core.loading /path/to/HiDream-O1-Image        # loads it and prints a summary

Accepted layouts:
- the official Hugging Face folder: config.json (Qwen3VLConfig) + model.safetensors, or shards listed in
  model.safetensors.index.json, + tokenizer files. Keys `model.*`; `lm_head.weight` is ignored.
- a ComfyUI single file: the same tensors under `diffusion_model.*` (no `model.`, no lm_head); the config
  comes from `config=` or from a config.json in the file's folder.

The model is built on the meta device and every tensor is read, cast and moved into place one at a time.
With base_precision="fp8" (core.fp8) the decoder linears are swapped for empty fp8 ones before any weight is
read, and each weight is quantised as it arrives: a full-precision copy of the model never exists, on the GPU
or anywhere (the peak is the fp8 model so far plus one tensor). With offload_blocks=N the frozen weights of N
decoder layers (core.offload picks which) are put in host memory as they arrive, and core.offload streams them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from torch import nn
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig

from core.fp8 import Fp8Linear, replace_with_fp8, resolve_base_precision
from core.layout import BOI_TOKEN, TMS_TOKEN, token_id
from core.model import DEFAULT_TMS_TOKEN_ID, HiDreamO1
from core.offload import BlockOffload, offloaded_layers

IGNORED_KEYS = {"lm_head.weight"}  # the generation forward never uses the LM head
COMFY_PREFIX = "diffusion_model."


class CheckpointError(ValueError):
    """The checkpoint does not match the HiDream-O1 architecture (names the offending keys)."""


def load_config(config) -> Qwen3VLConfig:
    """A Qwen3VLConfig from an instance, a dict, a config.json path or a folder holding one."""
    if isinstance(config, Qwen3VLConfig):
        return config
    if isinstance(config, dict):
        return Qwen3VLConfig(**config)
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json at {path}")
    data = json.loads(path.read_text())
    if data.get("model_type") != "qwen3_vl":
        raise CheckpointError(f"{path}: model_type is {data.get('model_type')!r}, expected 'qwen3_vl'")
    return Qwen3VLConfig(**data)


def _checkpoint_files(path: Path) -> tuple[list[Path], str, Path]:
    """(safetensors files, key prefix, folder holding config/tokenizer)."""
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path}: expected a .safetensors file or a checkpoint folder")
        with safe_open(str(path), framework="pt") as f:
            first = next(iter(f.keys()), "")
        prefix = COMFY_PREFIX if first.startswith(COMFY_PREFIX) else "model."
        return [path], prefix, path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: shards listed in the index are missing: {missing}")
        return [path / s for s in shards], "model.", path
    single = path / "model.safetensors"
    if single.is_file():
        return [single], "model.", path
    raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json")


def _our_name(key: str, prefix: str) -> str | None:
    """Checkpoint key -> our state-dict key (None for keys we deliberately skip)."""
    if key in IGNORED_KEYS:
        return None
    if prefix == COMFY_PREFIX:
        if not key.startswith(COMFY_PREFIX):
            return "?" + key  # reported as unknown
        return "model." + key[len(COMFY_PREFIX) :]
    return key


def _place(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_path, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_path)
    if isinstance(module, Fp8Linear) and leaf == "weight":
        if tuple(tensor.shape) != (module.out_features, module.in_features):
            raise CheckpointError(
                f"{name}: checkpoint shape {tuple(tensor.shape)} != model shape "
                f"{(module.out_features, module.in_features)} (config.json does not match the weights?)"
            )
        module.load_weight(tensor)  # quantised here; the full-precision tensor is dropped by the caller
        return
    if leaf in module._parameters:
        old = module._parameters[leaf]
        if tuple(old.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{name}: checkpoint shape {tuple(tensor.shape)} != model shape "
                f"{tuple(old.shape)} (config.json does not match the weights?)"
            )
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=old.requires_grad)
    else:
        old = module._buffers[leaf]
        if tuple(old.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{name}: checkpoint shape {tuple(tensor.shape)} != model shape {tuple(old.shape)}"
            )
        module._buffers[leaf] = tensor


def load_model(
    path,
    dtype=torch.float32,
    device="cpu",
    config=None,
    tokenizer=None,
    base_precision: str = "bf16",
    offload_blocks: int = 0,
    fp8_matmul: str = "auto",
) -> HiDreamO1:
    """Build HiDreamO1 on meta and stream the checkpoint into it; returns it in eval mode.

    tms/boi ids come from `tokenizer` or from a tokenizer found in the checkpoint folder; without one,
    tms falls back to 151673 and boi stays None. base_precision: "bf16" (the weights in `dtype`), "fp8" (the
    decoder linears in float8, computing in `dtype`; fp8_matmul as core.fp8.scaled_mm_for) or "auto" (the
    card's choice, core.fp8.default_base_precision). offload_blocks: decoder layers whose frozen weights are
    kept in host memory and streamed to the device by a core.offload.BlockOffload installed here.
    """
    path = Path(path)
    files, prefix, folder = _checkpoint_files(path)
    cfg = load_config(config if config is not None else folder)
    with torch.device("meta"):
        model = HiDreamO1(cfg)
    expected = dict(model.state_dict().items())  # persistent params + buffers, all on meta
    device = torch.device(device)
    if resolve_base_precision(base_precision, device) == "fp8":
        replace_with_fp8(model, dtype, device, fp8_matmul)  # empty fp8 linears, still on meta
    host_layers = {f"model.language_model.layers.{i}." for i in offloaded_layers(_n_layers(cfg), offload_blocks)}

    # Check names first (headers only): a bad checkpoint fails before any weight is read.
    plan, unknown = [], []
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                name = _our_name(key, prefix)
                if name is None:
                    continue
                if name in expected:
                    plan.append((file, key, name))
                else:
                    unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{path}: unknown keys (not in the HiDream-O1 architecture): {_head(sorted(unknown))}"
        )
    missing = sorted(set(expected) - {name for _, _, name in plan})
    if missing:
        shown = [m if prefix != COMFY_PREFIX else COMFY_PREFIX + m[len("model.") :] for m in missing]
        raise CheckpointError(f"{path}: missing keys: {_head(shown)}")

    for name, t in _read(files, plan, dtype, device):
        _place(model, name, t)  # one tensor at a time, cast on the way
        del t  # before the next is read
        if host_layers and name.startswith(tuple(host_layers)):
            _to_host(model, name)
    model.reset_rotary()
    _to_device_leftovers(model, device)
    if host_layers:
        BlockOffload(model, offload_blocks, device)
    model.eval()
    tok = tokenizer
    if tok is None and has_tokenizer(folder):
        tok = load_tokenizer(folder)
    if tok is not None:
        set_token_ids(model, tok)
    return model


def read_weights(path, names, dtype, device="cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each of `names` (our state-dict names), read from the checkpoint one at a time and cast
    to `dtype` on `device` exactly as load_model casts them: e.g. an fp8 base's full-precision linears, which
    LoRA merging rounds from (core.lora.merge). A name the checkpoint lacks is a CheckpointError, before any
    tensor is read."""
    files, prefix, _ = _checkpoint_files(Path(path))
    wanted, where = set(names), []
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            where += [(file, key, _our_name(key, prefix)) for key in f.keys() if _our_name(key, prefix) in wanted]
    missing = wanted - {name for _, _, name in where}
    if missing:
        raise CheckpointError(f"{path}: missing keys: {_head(sorted(missing))}")
    yield from _read(files, where, dtype, torch.device(device))


def _read(files: list[Path], plan: list[tuple[Path, str, str]], dtype, device: torch.device):
    """(our name, tensor) for each planned (file, checkpoint key, our name), floating tensors cast to dtype, on
    device; the generator keeps no reference to a tensor it has handed out. On CUDA safetensors reads each tensor
    straight onto the GPU, so host RAM never holds the weights."""
    read_on = "cpu"
    if device.type == "cuda":
        read_on = f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    for file in files:
        planned = [(key, name) for f, key, name in plan if f == file]
        if not planned:  # (read_weights of nothing: a bf16 base has no fp8 linears to read again)
            continue
        with safe_open(str(file), framework="pt", device=read_on) as f:
            for key, name in planned:
                yield name, _cast(f.get_tensor(key), dtype).to(device)


def _cast(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def _n_layers(cfg: Qwen3VLConfig) -> int:
    return cfg.text_config.num_hidden_layers


def _to_host(model: nn.Module, name: str) -> None:
    """Move the parameter just placed (an offloaded layer's) to host memory; buffers stay on the device."""
    module_path, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_path)
    p = module._parameters.get(leaf)
    if p is not None and p.device.type != "cpu":
        module._parameters[leaf] = nn.Parameter(p.data.to("cpu"), requires_grad=p.requires_grad)


def _to_device_leftovers(model: nn.Module, device: torch.device) -> None:
    """Any non-persistent buffer still on meta (not in the checkpoint by design) is an error worth naming."""
    left = [n for n, b in model.named_buffers() if b.device.type == "meta"]
    if left:
        raise CheckpointError(f"buffers left unmaterialised after loading: {left}")
    for m in model.modules():
        for k, b in m._buffers.items():
            if b is not None and b.device != device:
                m._buffers[k] = b.to(device)


def _head(items: list[str], n: int = 20) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "")


# ----------------------------------------------------------------------------- tokenizer
def has_tokenizer(folder) -> bool:
    folder = Path(folder)
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()


def load_tokenizer(path):
    """The tokenizer of a checkpoint folder (or of the folder beside a single file), offline."""
    from transformers import AutoTokenizer

    path = Path(path)
    folder = path.parent if path.is_file() else path
    if not has_tokenizer(folder):
        raise FileNotFoundError(f"no tokenizer files (tokenizer.json / tokenizer_config.json) in {folder}")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if getattr(tok, "chat_template", None) is None:
        # Qwen3-VL folders may keep the template with the processor (chat_template.json) only
        proc = folder / "chat_template.json"
        if proc.is_file():
            tok.chat_template = json.loads(proc.read_text())["chat_template"]
    return tok


def set_token_ids(model: HiDreamO1, tokenizer) -> None:
    tms = token_id(tokenizer, TMS_TOKEN)
    model.tms_token_id = tms if tms is not None else DEFAULT_TMS_TOKEN_ID
    model.boi_token_id = token_id(tokenizer, BOI_TOKEN)


if __name__ == "__main__":
    m = load_model(sys.argv[1])
    n = sum(p.numel() for p in m.parameters())
    print(f"loaded {sys.argv[1]}: {n / 1e6:.1f}M parameters, tms={m.tms_token_id}, boi={m.boi_token_id}")
