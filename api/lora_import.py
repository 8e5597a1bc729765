"""Importing a LoRA file: check it against the base model (torch-free), store it as uploaded, and store the
ComfyUI and PEFT copies it converts to. Returns the fields of its db row; LoraFileError (naming the problem)
when it is refused, with nothing left in the store.

    fields = store_lora_file(store, lora_id, "style.safetensors", fileobj, max_bytes,
                             index=base_index(settings.model_path), allow_partial=False)
"""

from __future__ import annotations

import io
import json
import tempfile
from typing import Iterator

from core.lora.check import LoraFileError, inspect_lora, read_peft_zip
from core.lora.convert import NotConvertible, canonical_modules, write_comfyui, write_peft
from core.lora.keys import ModuleIndex
from service.store import ArtifactStore


def store_lora_file(
    store: ArtifactStore,
    lora_id: str,
    filename: str,
    f,
    max_bytes: int,
    index: ModuleIndex | None = None,
    allow_partial: bool = False,
) -> dict:
    """Check the upload (against the base model's linears in `index`), store it as uploaded, and store the
    download formats it converts to. Entries left out under allow_partial are listed in the row's metadata."""
    size = f.seek(0, 2)
    if size > max_bytes:
        raise LoraFileError(f"over the LoRA size limit of {max_bytes} bytes")
    lower = filename.lower()
    if lower.endswith(".safetensors"):
        weights, wsize, config, original = f, size, None, "original.safetensors"
    elif lower.endswith(".zip"):
        data, config = read_peft_zip(f, max_bytes)
        weights, wsize, original = io.BytesIO(data), len(data), "original.zip"
    else:
        raise LoraFileError(
            "upload a .safetensors file or a .zip of a PEFT folder (pickle .bin/.pt files can run "
            "code and are not accepted)"
        )
    weights.seek(0)
    info = inspect_lora(weights, wsize, peft_config=config, index=index, allow_partial=allow_partial)
    if config is not None and info.format != "peft":
        raise LoraFileError(f"adapter_model.safetensors has {info.format} keys, not PEFT ones")
    prefix = f"loras/{lora_id}"
    try:
        f.seek(0)
        store.put_stream(f"{prefix}/{original}", _chunks(f))
        where, note = _store_formats(store, prefix, weights, info, config)
    except BaseException:
        store.delete_prefix(prefix)
        raise
    meta = {
        **info.metadata,
        **({"unplaced": info.unplaced[:50], "unplaced_count": len(info.unplaced)} if info.unplaced else {}),
        **({"conversion": note} if note else {}),
    }
    return dict(
        format=info.format,
        original_key=f"{prefix}/{original}",
        rank=info.rank,
        alpha=info.alpha,
        size_bytes=size,
        meta=meta,
        **where,
    )


def _chunks(f) -> Iterator[bytes]:
    """The rest of a file, 1 MiB at a time (what store.put_stream takes)."""
    return iter(lambda: f.read(1 << 20), b"")


def _store_formats(
    store: ArtifactStore, prefix: str, weights, info, config: dict | None
) -> tuple[dict, str | None]:
    """Store keys of the ComfyUI file and the PEFT folder. The ComfyUI copy is always written from the placed
    modules (ai-toolkit's legacy `diffusion_model.model.*` keys are ComfyUI-looking but ComfyUI maps none)."""
    where: dict[str, str] = {}
    if config is not None and not info.unplaced:  # an uploaded PEFT folder that fits whole: kept as it came
        weights.seek(0)
        store.put_stream(f"{prefix}/peft/adapter_model.safetensors", _chunks(weights))
        store.put_bytes(f"{prefix}/peft/adapter_config.json", json.dumps(config, indent=2).encode())
        where["peft_prefix"] = f"{prefix}/peft"
    try:
        modules = canonical_modules(weights, info, config)
    except NotConvertible as e:
        return where, str(e)
    if "peft_prefix" not in where:
        with tempfile.TemporaryFile() as tmp:
            peft_config = write_peft(weights, info.data_start, modules, tmp, info.metadata)
            tmp.seek(0)
            store.put_stream(f"{prefix}/peft/adapter_model.safetensors", _chunks(tmp))
        store.put_bytes(f"{prefix}/peft/adapter_config.json", json.dumps(peft_config, indent=2).encode())
        where["peft_prefix"] = f"{prefix}/peft"
    with tempfile.TemporaryFile() as tmp:
        write_comfyui(weights, info.data_start, modules, tmp, info.metadata)
        tmp.seek(0)
        store.put_stream(f"{prefix}/lora.safetensors", _chunks(tmp))
    where["comfyui_key"] = f"{prefix}/lora.safetensors"
    return where, None
