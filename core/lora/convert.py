"""Torch-free conversion of a LoRA to the download formats, by rewriting the safetensors header.

The modules come from core.lora.check.inspect_lora, placed on the base model with the loader's own key
grammar (core.lora.keys), so every spelling the loader reads converts to keys every tool reads: the key
names of each format are core.lora.keys.write_key's. Tensor bytes are copied unchanged when the dtype stays
(bf16 included); a dtype change or an alpha folded into the up weights (formats without a per-module alpha)
goes through numpy one tensor at a time.

    modules = canonical_modules(f, info, peft_config)              # "model.language_model.layers.0..." -> Module
    write_format(f, info.data_start, modules, out, "musubi", dtype="bf16")
    config = write_peft(f, info.data_start, modules, out)          # base_model.model.<path>.lora_A/B.weight
    path = convert_download(store, lora.comfyui_key, "diffsynth", "fp32", index)   # a temp file to send
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO

from core.lora.check import FLOAT_DTYPES, ITEMSIZE, LoraFileError, LoraInfo, _scalar, read_tensor
from core.lora.keys import carries_alpha, write_key

DTYPES = {"bf16": "BF16", "fp32": "F32"}  # what a download may ask for
SINGLE_FILE_FORMATS = ("comfyui", "musubi", "diffsynth")


class NotConvertible(ValueError):
    pass


@dataclass
class Module:
    down: dict[str, Any]  # header entries (dtype, shape, data_offsets) of the original file
    up: dict[str, Any]
    alpha: float | None  # None: the loader's default (alpha = rank)


def canonical_modules(f: BinaryIO, info: LoraInfo, peft_config: dict[str, Any] | None = None) -> dict[str, Module]:
    """The placed modules of an inspected file, by the base model's module path."""
    if peft_config and (
        peft_config.get("rank_pattern")
        or peft_config.get("alpha_pattern")
        or peft_config.get("use_rslora")
        or peft_config.get("use_dora")
    ):
        raise NotConvertible("PEFT configs with rank/alpha patterns, rsLoRA or DoRA are kept as uploaded only")
    if any(not path.startswith("model.") for path in info.placed):
        raise NotConvertible("the base model could not be read to place its modules: kept as uploaded only")
    config_alpha = float(peft_config["lora_alpha"]) if peft_config and "lora_alpha" in peft_config else None
    return {
        path: Module(r["down"], r["up"], _scalar(f, info.data_start, r["alpha"]) if "alpha" in r else config_alpha)
        for path, r in info.placed.items()
    }


def _encode(values, dtype: str) -> bytes:
    """float32 numpy -> safetensors bytes in `dtype` (bf16 rounded to nearest even, as torch does)."""
    import numpy as np

    if dtype in FLOAT_DTYPES:
        return values.astype(FLOAT_DTYPES[dtype]).tobytes()
    if dtype == "BF16":
        bits = values.astype(np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()
    raise NotConvertible(f"cannot write {dtype} tensors")


def _write(
    out: BinaryIO, src: BinaryIO, data_start: int, items: list[tuple[str, Any]], metadata: dict[str, str]
) -> None:
    """items: (key, (header entry to copy, dtype to write or None, factor)) or (key, float scalar as F32)."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset, blobs = 0, []
    for key, what in items:
        if isinstance(what, tuple):
            entry, dtype, factor = what
            dtype = dtype or entry["dtype"]
            n = 1
            for d in entry["shape"]:
                n *= d
            size = n * ITEMSIZE[dtype]
            header[key] = {"dtype": dtype, "shape": entry["shape"], "data_offsets": [offset, offset + size]}
        else:
            size = 4
            header[key] = {"dtype": "F32", "shape": [], "data_offsets": [offset, offset + size]}
        offset += size
        blobs.append(what)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data start to 8 bytes
    out.write(struct.pack("<Q", len(raw)) + raw)
    for what in blobs:
        if not isinstance(what, tuple):
            out.write(struct.pack("<f", what))
            continue
        entry, dtype, factor = what
        if (dtype or entry["dtype"]) == entry["dtype"] and factor == 1.0:
            a, b = entry["data_offsets"]
            src.seek(data_start + a)
            left = b - a
            while left:
                block = src.read(min(left, 1 << 20))
                if not block:
                    raise NotConvertible("the file ends before its last tensor")
                out.write(block)
                left -= len(block)
        else:
            try:
                values = read_tensor(src, data_start, entry)
            except LoraFileError as e:
                raise NotConvertible(str(e)) from None
            out.write(_encode(values * factor if factor != 1.0 else values, dtype or entry["dtype"]))


def write_format(
    src: BinaryIO,
    data_start: int,
    modules: dict[str, Module],
    out: BinaryIO,
    fmt: str,
    dtype: str | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """One safetensors file in `fmt` (comfyui, musubi, diffsynth); `dtype` "bf16" / "fp32" / None (as stored).

    comfyui and musubi keep alpha as a scalar per module; diffsynth has none, so alpha/rank is folded into up.
    """
    target = DTYPES[dtype] if dtype else None
    items: list[tuple[str, Any]] = []
    for path, m in sorted(modules.items()):
        rank = m.down["shape"][0]
        factor = 1.0 if carries_alpha(fmt) or m.alpha is None else float(m.alpha) / rank
        items += [
            (write_key(fmt, path, "down"), (m.down, target, 1.0)),
            (write_key(fmt, path, "up"), (m.up, target, factor)),
        ]
        if carries_alpha(fmt) and m.alpha is not None:
            items.append((write_key(fmt, path, "alpha"), float(m.alpha)))
    _write(out, src, data_start, items, {**(metadata or {}), "format": "pt"})


def write_comfyui(
    src: BinaryIO,
    data_start: int,
    modules: dict[str, Module],
    out: BinaryIO,
    metadata: dict[str, str] | None = None,
) -> None:
    write_format(src, data_start, modules, out, "comfyui", None, metadata)


def write_peft(
    src: BinaryIO,
    data_start: int,
    modules: dict[str, Module],
    out: BinaryIO,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write adapter_model.safetensors to ``out``; returns its adapter_config.json (per-module rank/alpha as
    PEFT patterns where they differ from the most common value)."""
    items: list[tuple[str, Any]] = []
    ranks, alphas = {}, {}
    for path, m in sorted(modules.items()):
        items += [
            (write_key("peft", path, "down"), (m.down, None, 1.0)),
            (write_key("peft", path, "up"), (m.up, None, 1.0)),
        ]
        ranks[path] = m.down["shape"][0]
        alphas[path] = float(m.alpha) if m.alpha is not None else float(ranks[path])  # PEFT has no "unset"
    _write(out, src, data_start, items, {**(metadata or {}), "format": "pt"})
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        # Full paths, not leaf names: "q_proj" alone would also match modules the LoRA never touched.
        "target_modules": sorted(modules),
        "rank_pattern": {p: v for p, v in ranks.items() if v != r},
        "alpha_pattern": {p: v for p, v in alphas.items() if v != alpha},
        "bias": "none",
        "lora_dropout": 0.0,
        "use_rslora": False,
    }


def convert_download(store, key: str, fmt: str, dtype: str, index) -> str:
    """A temp file (the caller deletes it) holding the stored ComfyUI copy at `key` in `fmt` and `dtype`.

    The stored copy is read with the loader's grammar, so LoRAs stored before keys were normalised on import
    (ai-toolkit's `diffusion_model.model.*`, `transformer.*`) convert as well as new ones."""
    from core.lora.check import inspect_lora

    fd, path = tempfile.mkstemp(suffix=".safetensors")
    try:
        with store.open(key) as src, os.fdopen(fd, "wb") as out:
            size = src.seek(0, 2)
            src.seek(0)
            info = inspect_lora(src, size, index=index or _own_index(src, size), allow_partial=True)
            write_format(src, info.data_start, canonical_modules(src, info), out, fmt, dtype, info.metadata)
        os.chmod(path, 0o644)
    except BaseException:
        os.unlink(path)
        raise
    return path


def _own_index(src: BinaryIO, size: int):
    """Without a readable base model: the modules a stored ComfyUI copy names (ours are all written as
    diffusion_model.<path without "model.">), with the shapes the file gives them."""
    from core.lora.check import read_header
    from core.lora.keys import ModuleIndex, split_key

    header, _, _ = read_header(src, size)
    src.seek(0)
    roles: dict[str, dict[str, dict]] = {}
    for key, entry in header.items():
        hit = split_key(key)
        if hit and hit[0].startswith("diffusion_model."):
            roles.setdefault(hit[0], {})[hit[1]] = entry
    return ModuleIndex(
        {
            "model." + stem[len("diffusion_model.") :]: (r["up"]["shape"][0], r["down"]["shape"][1])
            for stem, r in roles.items()
            if "up" in r and "down" in r
        }
    )
