"""Torch-free check of an imported LoRA: parse the safetensors header and classify its key names.

The trainer's loader (core.lora.read_lora) needs torch; the API only has to know that a file is a sound
safetensors LoRA in one of the layouts that loader reads, and its rank/alpha for display. Tensors are not
loaded: only the JSON header (and scalar `.alpha` values) are read.

    info = inspect_lora(open("style.safetensors", "rb"), size)   # LoraInfo(format="comfyui", rank=16, ...)
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from core.lora_keys import ROLES, layout_of

MAX_HEADER_BYTES = 100 * 2**20
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
            "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
# Module names of HiDream-O1 a LoRA can target (attention/MLP linears, and the image in/out layers).
TARGETS = re.compile(r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|final_layer2|x_embedder|"
                     r"t_embedder1)")


class LoraFileError(ValueError):
    pass


@dataclass
class LoraInfo:
    format: str                       # peft | comfyui | musubi | diffsynth | bare | mixed
    rank: int | None
    alpha: float | None
    modules: int                      # complete down/up pairs
    metadata: dict[str, str] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)


def read_header(f: BinaryIO, size: int) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """Tensor entries, metadata and where the data starts, with every offset checked against the file size."""
    head = f.read(8)
    if len(head) < 8:
        raise LoraFileError("not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", head)
    if n > min(MAX_HEADER_BYTES, size - 8):
        raise LoraFileError("not a safetensors file (header length out of range)")
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LoraFileError("not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise LoraFileError("not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_bytes = size - 8 - n
    for key, t in header.items():
        try:
            dtype, shape, (a, b) = t["dtype"], t["shape"], t["data_offsets"]
            numel = math.prod(shape)
            ok = dtype in ITEMSIZE and all(isinstance(d, int) and d >= 0 for d in shape) \
                and 0 <= a <= b <= data_bytes and b - a == numel * ITEMSIZE[dtype]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise LoraFileError(f"tensor {key!r}: malformed entry in the safetensors header")
    metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    return header, metadata, 8 + n


def _scalar(f: BinaryIO, offset: int, entry: dict[str, Any]) -> float | None:
    a, b = entry["data_offsets"]
    if b - a not in (2, 4, 8):
        return None
    f.seek(offset + a)
    raw = f.read(b - a)
    dtype = entry["dtype"]
    if dtype == "F32":
        return struct.unpack("<f", raw)[0]
    if dtype == "F64":
        return struct.unpack("<d", raw)[0]
    if dtype == "F16":
        return struct.unpack("<e", raw)[0]
    if dtype == "BF16":
        return struct.unpack("<f", b"\0\0" + raw)[0]
    return None


def inspect_lora(f: BinaryIO, size: int, peft_config: dict[str, Any] | None = None) -> LoraInfo:
    """Classify a safetensors LoRA; LoraFileError when it is not one the trainer's loader can read."""
    header, metadata, data_start = read_header(f, size)
    stems: dict[str, dict[str, Any]] = {}
    unknown, layouts = [], set()
    for key, entry in header.items():
        role = next(((suffix, r) for suffix, r in ROLES if key.endswith(suffix)), None)
        if role is None:
            unknown.append(key)
            continue
        stem = key[: -len(role[0])]
        stems.setdefault(stem, {})[role[1]] = entry
        if role[1] != "alpha":  # a bare ".alpha" says nothing about the layout (DiffSynth files may carry one)
            layouts.add(layout_of(key))
    pairs, ranks, alphas = 0, set(), []
    for stem, roles in stems.items():
        down, up = roles.get("down"), roles.get("up")
        if down is None or up is None:
            raise LoraFileError(f"{stem}: has {'lora_down/A' if down else 'lora_up/B'} but not its pair")
        if len(down["shape"]) != 2 or len(up["shape"]) != 2 or down["shape"][0] != up["shape"][1]:
            raise LoraFileError(f"{stem}: down {down['shape']} and up {up['shape']} are not a rank-r pair")
        pairs += 1
        ranks.add(down["shape"][0])
        if "alpha" in roles:
            alphas.append(_scalar(f, data_start, roles["alpha"]))
    if pairs == 0:
        raise LoraFileError("no LoRA weights found (expected keys ending in lora_A/lora_B or lora_down/lora_up)")
    if not any(TARGETS.search(stem) for stem in stems):
        raise LoraFileError("its modules are not HiDream-O1 modules (no q/k/v/o/gate/up/down_proj, "
                            "final_layer2, x_embedder or t_embedder1 in the key names)")
    alpha = None
    if peft_config and peft_config.get("lora_alpha") is not None:
        alpha = float(peft_config["lora_alpha"])
    elif alphas and alphas[0] is not None:
        alpha = float(alphas[0])
    return LoraInfo(format=layouts.pop() if len(layouts) == 1 else "mixed", rank=max(ranks), alpha=alpha,
                    modules=pairs, metadata=metadata, unknown_keys=unknown[:50])
