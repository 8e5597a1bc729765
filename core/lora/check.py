"""Torch-free check of an imported LoRA: parse the safetensors header and classify its key names.

The trainer's loader (core.lora.read_lora) needs torch; the API has to know that a file is a sound
safetensors LoRA in one of the layouts that loader reads (core.lora.keys, the same grammar), that its
modules are the base model's with the base model's shapes, and that its weights are finite. Tensors are
read one block at a time with numpy, never whole files.

    info = inspect_lora(open("style.safetensors", "rb"), size, index=base_index(settings.model_path))
    # -> LoraInfo(format="comfyui", rank=16, modules=252, placed={"model.language_model...q_proj": ...}, ...)
"""

from __future__ import annotations

import json
import math
import re
import struct
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from core.lora.keys import (
    NOT_LINEAR,
    ModuleIndex,
    layout_of,
    not_lora_reason,  # noqa: F401 (ROLES:
    split_key,
)  # re-exported)

MAX_HEADER_BYTES = 100 * 2**20
ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}
# Module names of HiDream-O1 a LoRA can target (attention/MLP linears, and the image in/out layers).
TARGETS = re.compile(
    r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|final_layer2|x_embedder|"
    r"t_embedder1)"
)


class LoraFileError(ValueError):
    pass


@dataclass
class LoraInfo:
    format: str  # peft | comfyui | musubi | diffsynth | bare | mixed
    rank: int | None
    alpha: float | None
    modules: int  # complete down/up pairs that place on the base model
    metadata: dict[str, str] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)  # "key: reason" for every entry left out
    placed: dict[str, dict[str, Any]] = field(default_factory=dict)  # module path (or stem) -> header entries
    data_start: int = 0


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
            ok = (
                dtype in ITEMSIZE
                and all(isinstance(d, int) and d >= 0 for d in shape)
                and 0 <= a <= b <= data_bytes
                and b - a == numel * ITEMSIZE[dtype]
            )
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise LoraFileError(f"tensor {key!r}: malformed entry in the safetensors header")
    metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    return header, metadata, 8 + n


def base_index(model_path) -> ModuleIndex | None:
    """The linears of the base model at `model_path` (a Hugging Face folder or a ComfyUI single file), read from
    safetensors headers only; None when there is no readable checkpoint there. Cached per file set and mtime."""
    path = Path(model_path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        return None
    return _index_of(tuple((str(p), p.stat().st_mtime_ns) for p in files))


@lru_cache(maxsize=4)
def _index_of(files: tuple[tuple[str, int], ...]) -> ModuleIndex | None:
    linears: dict[str, tuple[int, int]] = {}
    for name, _ in files:
        try:
            with open(name, "rb") as f:
                header, _, _ = read_header(f, Path(name).stat().st_size)
        except (OSError, LoraFileError):
            return None
        for key, entry in header.items():
            if not key.endswith(".weight") or len(entry["shape"]) != 2:
                continue
            module = key[: -len(".weight")]
            if module.startswith("diffusion_model."):  # ComfyUI single file: "model." dropped
                module = "model." + module[len("diffusion_model.") :]
            if module.startswith("model.") and not NOT_LINEAR.search(module):
                linears[module] = (entry["shape"][0], entry["shape"][1])
    return ModuleIndex(linears) if linears else None


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


def _decode(raw: bytes, dtype: str):
    """A tensor's bytes as a float32 numpy array (numpy without torch: the API has no torch)."""
    import numpy as np

    if dtype == "BF16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    if dtype in FLOAT_DTYPES:
        return np.frombuffer(raw, FLOAT_DTYPES[dtype]).astype(np.float32)
    raise LoraFileError(f"{dtype} tensors are not LoRA weights")


FLOAT_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def read_tensor(f: BinaryIO, data_start: int, entry: dict[str, Any]):
    """One tensor as float32 numpy, shaped as the header says."""
    a, b = entry["data_offsets"]
    f.seek(data_start + a)
    raw = f.read(b - a)
    if len(raw) != b - a:
        raise LoraFileError("the file ends before its last tensor")
    return _decode(raw, entry["dtype"]).reshape(entry["shape"])


def _finite(f: BinaryIO, data_start: int, entry: dict[str, Any]) -> bool:
    """Every value finite; read in blocks so a large tensor never sits in memory whole."""
    import numpy as np

    if entry["dtype"] not in FLOAT_DTYPES and entry["dtype"] != "BF16":
        return True  # integer tensors cannot hold NaN
    a, b = entry["data_offsets"]
    step = ITEMSIZE[entry["dtype"]] * (1 << 20)
    f.seek(data_start + a)
    left = b - a
    while left:
        raw = f.read(min(left, step))
        if not raw:
            raise LoraFileError("the file ends before its last tensor")
        if not np.isfinite(_decode(raw, entry["dtype"])).all():
            return False
        left -= len(raw)
    return True


def inspect_lora(
    f: BinaryIO,
    size: int,
    peft_config: dict[str, Any] | None = None,
    index: ModuleIndex | None = None,
    allow_partial: bool = False,
) -> LoraInfo:
    """Classify a safetensors LoRA; LoraFileError when the trainer's loader could not use it.

    With `index` (the base model's linears, see api.base_model) every module is placed with the loader's own
    key grammar and its shapes checked; entries that cannot be applied refuse the file unless
    `allow_partial`, and a file where nothing fits is always refused. Every placed tensor must be finite.
    """
    header, metadata, data_start = read_header(f, size)
    stems: dict[str, dict[str, Any]] = {}
    unknown, layouts = [], set()
    for key, entry in header.items():
        hit = split_key(key)
        if hit is None:
            unknown.append(key)
            continue
        stems.setdefault(hit[0], {})[hit[1]] = entry
        if hit[1] != "alpha":  # a bare ".alpha" says nothing about the layout (DiffSynth files may carry one)
            layouts.add(layout_of(key))
    for stem, roles in stems.items():
        down, up = roles.get("down"), roles.get("up")
        if down is None and up is None:
            unknown.append(stem + ".alpha")  # an alpha with no weights to scale
            continue
        if down is None or up is None:
            raise LoraFileError(f"{stem}: has {'lora_down/A' if down else 'lora_up/B'} but not its pair")
        if len(down["shape"]) != 2 or len(up["shape"]) != 2 or down["shape"][0] != up["shape"][1]:
            raise LoraFileError(f"{stem}: down {down['shape']} and up {up['shape']} are not a rank-r pair")
    stems = {s: r for s, r in stems.items() if "down" in r}
    if not stems:
        raise LoraFileError("no LoRA weights found (expected keys ending in lora_A/lora_B or lora_down/lora_up)")
    unplaced = [f"{k}: {not_lora_reason(k)}" for k in unknown]
    placed: dict[str, dict[str, Any]] = {}
    if index is None:  # no base model to check against: the key names must at least look like its modules
        if not any(TARGETS.search(stem) for stem in stems):
            raise LoraFileError(
                "its modules are not HiDream-O1 modules (no q/k/v/o/gate/up/down_proj, "
                "final_layer2, x_embedder or t_embedder1 in the key names)"
            )
        placed = {stem: {**roles, "stem": stem} for stem, roles in stems.items()}
    else:
        for stem, roles in stems.items():
            path = index.resolve(stem)
            if path is None:
                unplaced.append(f"{stem}: {index.why_not(stem)}")
                continue
            out_f, in_f = index.linears[path]
            (_, d_in), (d_out, _) = roles["down"]["shape"], roles["up"]["shape"]
            if (d_in, d_out) != (in_f, out_f):
                unplaced.append(
                    f"{stem}: down {roles['down']['shape']} / up {roles['up']['shape']} do not fit "
                    f"{path} ({out_f} x {in_f}): a LoRA of another model"
                )
            elif path in placed:
                unplaced.append(f"{stem}: a second entry for {path}")
            else:
                placed[path] = {**roles, "stem": stem}
        if not placed:
            first = next((u for u in unplaced if u.split(":")[0] in stems), unplaced[0])
            raise LoraFileError(
                f"its modules are not HiDream-O1 modules with the base model's shapes: none of "
                f"its {len(stems)} LoRA modules fits (first: {first})"
            )
        if unplaced and not allow_partial:
            raise LoraFileError(
                f"{len(unplaced)} of its entries cannot be applied to the base model, "
                f"first: {'; '.join(unplaced[:3])} (import with allow_partial=true to keep "
                f"the {len(placed)} modules that fit)"
            )
    for roles in placed.values():
        for role in ("down", "up", "alpha"):
            if role in roles and not _finite(f, data_start, roles[role]):
                raise LoraFileError(f"{roles['stem']}: its {role} weights hold NaN or infinite values")
    ranks = {roles["down"]["shape"][0] for roles in placed.values()}
    alphas = [_scalar(f, data_start, roles["alpha"]) for roles in placed.values() if "alpha" in roles]
    alpha = None
    if peft_config and peft_config.get("lora_alpha") is not None:
        alpha = float(peft_config["lora_alpha"])
    elif alphas and alphas[0] is not None:
        alpha = float(alphas[0])
    return LoraInfo(
        format=layouts.pop() if len(layouts) == 1 else "mixed",
        rank=max(ranks),
        alpha=alpha,
        modules=len(placed),
        metadata=metadata,
        unplaced=unplaced,
        placed=placed,
        data_start=data_start,
    )


PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def read_peft_zip(f, max_bytes: int) -> tuple[bytes, dict]:
    """The weights and config of a PEFT folder in a zip (at its root or in one folder); nothing else is read."""
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
    except zipfile.BadZipFile as e:
        raise LoraFileError(f"not a readable zip ({e})") from None
    with zf:
        found = {
            PurePosixPath(i.filename).name: i
            for i in zf.infolist()
            if PurePosixPath(i.filename).name in PEFT_FILES
            and len(PurePosixPath(i.filename).parts) <= 2
            and ".." not in PurePosixPath(i.filename).parts
            and not i.is_dir()
        }
        missing = [n for n in PEFT_FILES if n not in found]
        if missing:
            raise LoraFileError(f"the zip is not a PEFT folder: {', '.join(missing)} missing")
        if found["adapter_model.safetensors"].file_size > max_bytes:
            raise LoraFileError(f"adapter_model.safetensors expands to over {max_bytes} bytes")
        if found["adapter_config.json"].file_size > 1 << 20:
            raise LoraFileError("adapter_config.json is over 1 MiB")
        try:
            config = json.loads(zf.read(found["adapter_config.json"]))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LoraFileError("adapter_config.json is not JSON") from None
        if not isinstance(config, dict):
            raise LoraFileError("adapter_config.json is not a JSON object")
        return zf.read(found["adapter_model.safetensors"]), config
