"""Apply one or several LoRAs with scales to a resident model, and swap them without touching the base.

    a = bind_lora(model, "style.safetensors"); b = bind_lora(model, "other.safetensors")
    with apply_loras(model, [(a, 1.0), (b, 0.5)]):
        images = sampler(...)
    set_loras(model, [(a, 0.8)]) ... clear_loras(model)     # the same, for callers that hold state

By default, forward hooks: merging then un-merging in bfloat16 without a kept copy drifts the base a little
on every swap, and a copy costs as much memory as the weights. A hook adds
up(down(x)) to a linear's output and is removed by dropping its handle, so the base weights are never
written and state-dict keys stay the model's own. All LoRAs of one module are concatenated into one
down/up pair, so N LoRAs cost two small matmuls per module, not 2N.

On a model with LoRA slots (core.lora.slots.install_lora_slots, what a compiled sampler needs) the same
calls write the deltas into the slots instead, so no hook is added or removed and torch.compile does not
recompile; only what does not fit the slots (a module without one, more ranks than the capacity) falls
back to a hook for that module, which is correct but makes the compiled step recompile.

On a model with LoRA merging (core.lora.merge.install_lora_merging: the base weights kept aside, so merging
is undone exactly) the same calls merge the deltas into the weights instead: no per-step cost at all, and a
set_loras with the LoRAs and scales already merged does nothing.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.lora.formats import BoundLora
from core.lora.merge import lora_merging, merge_parts
from core.lora.slots import ACTIVE_ATTR, fill_slots, lora_slots, slots_on

log = logging.getLogger(__name__)

_HANDLES_ATTR = "_o1lora_hooks"


class _Delta:
    """The forward hook of one linear: out + up(down(x)); down/up already carry the scales."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor):
        self.down, self.up = down, up

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        return out + F.linear(F.linear(x.to(self.down.dtype), self.down), self.up).to(out.dtype)


def _remove_hooks(model: nn.Module) -> None:
    for h in getattr(model, _HANDLES_ATTR, []):
        h.remove()
    setattr(model, _HANDLES_ATTR, [])


def clear_loras(model: nn.Module) -> None:
    """The plain base again: hooks removed and, on a model with slots, every slot zeroed."""
    _remove_hooks(model)
    if getattr(model, ACTIVE_ATTR, None):
        fill_slots(model, {})
    merging = lora_merging(model)
    if merging is not None:
        if merging.merged:
            merge_parts(model, {})
        merging.current = []


def set_loras(model: nn.Module, loras: Sequence[tuple[BoundLora, float]]) -> None:
    """Replace whatever LoRAs are active with `loras` (an empty list clears). Scale 0 entries are skipped."""
    for item in loras:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], BoundLora)):
            raise TypeError(f"set_loras wants (BoundLora, scale) pairs, got {item!r:.80}")
    merging = lora_merging(model)
    if merging is not None and merging.same_as_current(loras):
        return  # already merged: a request with the previous request's LoRAs costs nothing
    modules = dict(model.named_modules())
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for lora, scale in loras:
        if scale == 0:
            continue
        for path, (down, up) in lora.deltas.items():
            if path not in modules:
                raise ValueError(f"LoRA {lora.name!r} was bound to another model: {path} is not a module here")
            parts.setdefault(path, []).append((down, up, float(scale)))
    if merging is not None:
        merging.current = []  # until the merge is complete (a failure part-way leaves no false "current")
        parts = merge_parts(model, parts)  # what remains cannot be merged (not a plain on-device linear)
        merging.current = list(loras)
    elif lora_slots(model):
        parts = fill_slots(model, parts)  # what remains did not fit a slot
        if parts:
            log.warning(
                "LoRA: %d modules do not fit the slots (no slot, or over the rank capacity); "
                "applied by hooks, so a compiled step recompiles",
                len(parts),
            )
    _remove_hooks(model)
    handles = []
    for path, pairs in parts.items():
        down = torch.cat([d for d, _, _ in pairs], dim=0)  # [sum r, in]
        up = torch.cat([u * s for _, u, s in pairs], dim=1)  # [out, sum r]
        handles.append(modules[path].register_forward_hook(_Delta(down, up)))
    setattr(model, _HANDLES_ATTR, handles)


@contextmanager
def apply_loras(model: nn.Module, loras: Sequence[tuple[BoundLora, float]]) -> Iterator[nn.Module]:
    """Context manager form of set_loras; restores the plain base model on exit, even on error."""
    set_loras(model, loras)
    try:
        yield model
    finally:
        clear_loras(model)


def capture_state(model: nn.Module) -> tuple | None:
    """What a captured denoise step (core.step_graphs) bakes in of the LoRAs, besides tensor values: whether the
    slots run. None while plain hooks carry a LoRA: each set_loras makes their tensors anew, so a kept graph would
    read the old ones. Merged weights and filled slots are written in place: a replay reads them as they are."""
    if getattr(model, _HANDLES_ATTR, []):
        return None
    return (slots_on(model),)


def active_lora_modules(model: nn.Module) -> int:
    """How many linears currently carry a LoRA (a hook or a filled slot; 0 means the plain base)."""
    merging = lora_merging(model)
    merged = len(merging.merged) if merging is not None else 0
    return len(getattr(model, _HANDLES_ATTR, [])) + len(getattr(model, ACTIVE_ATTR, ())) + merged
