"""LoRA for HiDream-O1-Image: PEFT injection for training, export, import of every layout in the wild,
and applying several LoRAs with scales to a resident base model (hot-swap, no reload).

    from core.lora import LoraSpec, inject_lora, adapter_state_dict        # training (inject.py)
    from core.lora import save_peft_folder, save_comfyui_file, save_lora_file   # export (export.py)
    from core.lora import read_lora, bind_lora, apply_loras, set_loras     # inference (formats.py, apply.py)

Torch-free, for the API: keys.py (the key grammar of every layout), check.py (an upload's safetensors header
checked against the base model), convert.py (header rewrite into the download formats). Importing this
package imports no torch; the torch-side names below load on first use.
"""

# name -> module: the torch side, imported when first asked for (PEP 562), so the API can use keys/check/convert.
_LAZY = {
    **dict.fromkeys(("active_lora_modules", "apply_loras", "capture_state", "clear_loras", "set_loras"), "apply"),
    **dict.fromkeys(
        (
            "build_metadata",
            "comfyui_tensors",
            "config_hash",
            "lora_file_tensors",
            "save_comfyui_file",
            "save_lora_file",
            "save_peft_folder",
        ),
        "export",
    ),
    **dict.fromkeys(("BoundLora", "LoraFile", "bind_lora", "module_index", "read_lora"), "formats"),
    **dict.fromkeys(
        ("full_weight_names", "install_lora_merging", "lora_merging", "merge_copy_bytes", "remove_lora_merging"),
        "merge",
    ),
    **dict.fromkeys(
        ("install_lora_slots", "lora_slots", "remove_lora_slots", "slot_capacity", "slots_forced_on", "slots_on"),
        "slots",
    ),
    **dict.fromkeys(
        (
            "EXTRA_TARGETS",
            "LoraSpec",
            "adapter_state_dict",
            "inject_lora",
            "load_adapter_state_dict",
            "lora_parameters",
            "set_adapter_enabled",
            "target_names",
        ),
        "inject",
    ),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"core.lora.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'core.lora' has no attribute {name!r}")


def load_lora(model, path, name: str | None = None, strict: bool = False):
    """read + bind in one call (what `--lora FILE:scale` and the generation worker use) -> BoundLora."""
    from core.lora.formats import bind_lora, read_lora

    return bind_lora(model, read_lora(path), name=name or str(path), strict=strict)


def parse_lora_arg(arg: str) -> tuple[str, float]:
    """'FILE' or 'FILE:scale' -> (FILE, scale); a Windows drive colon or a colon in a path stays in FILE."""
    path, sep, tail = arg.rpartition(":")
    if sep:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return arg, 1.0


__all__ = [
    "EXTRA_TARGETS",
    "BoundLora",
    "LoraFile",
    "LoraSpec",
    "active_lora_modules",
    "adapter_state_dict",
    "apply_loras",
    "bind_lora",
    "build_metadata",
    "capture_state",
    "clear_loras",
    "comfyui_tensors",
    "config_hash",
    "inject_lora",
    "load_adapter_state_dict",
    "load_lora",
    "lora_file_tensors",
    "lora_parameters",
    "module_index",
    "parse_lora_arg",
    "read_lora",
    "save_comfyui_file",
    "save_lora_file",
    "save_peft_folder",
    "set_adapter_enabled",
    "set_loras",
    "target_names",
    "full_weight_names",
    "install_lora_merging",
    "install_lora_slots",
    "lora_merging",
    "merge_copy_bytes",
    "remove_lora_merging",
    "lora_slots",
    "remove_lora_slots",
    "slot_capacity",
    "slots_forced_on",
    "slots_on",
]
