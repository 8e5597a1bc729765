"""LoRA deltas as data: fixed-capacity down/up buffers on every targeted linear, filled in place on a switch.

    install_lora_slots(model, capacity=64)        # once, before torch.compile sees the model
    set_loras(model, [(a, 1.0), (b, 0.5)])        # core.lora.apply fills the slots (copy_), no hook changes

Why: forward hooks that come and go (core.lora.apply's plain mode) are part of what torch.compile guards on,
so every new LoRA set recompiles the denoise (tens of seconds at full size). Here every targeted linear
carries one persistent hook and two non-persistent buffers, `o1_lora_down` [capacity, in] and
`o1_lora_up` [out, capacity], zeros when no LoRA is active. Switching the LoRA set or its scales only
writes into these buffers (same shape, dtype, device), which the compiled graph reads as inputs: no
recompile, and the base weights are never written. The cost is two rank-`capacity` matmuls per linear
while any LoRA is active (+15% per step at full size on an H200, bench/RESULTS.md, about the same at
capacity 16 or 64). With no LoRA active one model-wide switch turns every slot off, so the plain requests
run the plain layer: the compiled step then has two variants (slots on / off), both compiled at warm-up,
and switching LoRAs within "on" still never recompiles. The state dict is unchanged (the buffers are not
persistent).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from core.lora.inject import EXTRA_TARGETS, LM_PATTERN

SLOTS_ATTR = "_o1lora_slots"  # model attribute: {module path: linear with slots}
ACTIVE_ATTR = "_o1lora_slot_active"  # model attribute: paths whose slots hold a non-zero delta
DOWN, UP = "o1_lora_down", "o1_lora_up"
# The recipe's targets plus the optional ones: a LoRA trained by this project, or any common layout of it,
# places only here. A LoRA on another linear still works, through a plain hook (see apply.set_loras).
SLOT_PATTERN = "|".join([LM_PATTERN, *EXTRA_TARGETS.values()])


SWITCH = "_o1lora_slot_switch"  # module attribute: the model's one SlotSwitch


class SlotSwitch:
    """Whether a model's slots run at all; one object shared by all its slots. torch.compile guards on
    `.on`, so a compiled step has one variant per value (not one per LoRA set: those are data)."""

    def __init__(self):
        self.on = False


def _slot_hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    if not getattr(module, SWITCH).on:  # no LoRA active anywhere: the plain linear, no extra kernels
        return out
    # apply._Delta's arithmetic on the fixed-shape buffers (zero columns add exact zeros). The up
    # projection and the add are one addmm: the output is read and written once, not three times.
    down, up = getattr(module, DOWN), getattr(module, UP)
    h = F.linear(args[0].to(down.dtype), down)
    if h.dtype != out.dtype:
        return out + F.linear(h, up).to(out.dtype)
    return torch.addmm(out.reshape(-1, out.shape[-1]), h.reshape(-1, h.shape[-1]), up.t()).view(out.shape)


def install_lora_slots(model: nn.Module, capacity: int) -> int:
    """Give every targeted linear zeroed slots of `capacity` ranks (idempotent for the same capacity);
    returns how many linears carry slots. Buffers take the linear's weight dtype (an fp8 linear's compute dtype)
    and device; install them before any block offload (core.offload), which moves offloaded weights away."""
    if capacity < 1:
        raise ValueError(f"LoRA slot capacity must be >= 1 rank, got {capacity}")
    have = lora_slots(model)
    if have:
        if slot_capacity(model) == capacity:
            return len(have)
        remove_lora_slots(model)
    rx = re.compile(SLOT_PATTERN)
    slots, switch = {}, SlotSwitch()
    for path, m in model.named_modules():
        if isinstance(m, nn.Linear) and rx.fullmatch(path):
            # an fp8 linear (core.fp8) computes in its compute_dtype: the LoRA delta stays in that dtype
            dtype, dev = getattr(m, "compute_dtype", m.weight.dtype), m.weight.device
            m.register_buffer(
                DOWN, torch.zeros(capacity, m.in_features, dtype=dtype, device=dev), persistent=False
            )
            m.register_buffer(UP, torch.zeros(m.out_features, capacity, dtype=dtype, device=dev), persistent=False)
            setattr(m, SWITCH, switch)
            m._o1lora_slot_handle = m.register_forward_hook(_slot_hook)
            slots[path] = m
    setattr(model, SLOTS_ATTR, slots)
    setattr(model, ACTIVE_ATTR, set())
    return len(slots)


def remove_lora_slots(model: nn.Module) -> None:
    """Back to the plain model (hooks and buffers gone)."""
    for m in lora_slots(model).values():
        m._o1lora_slot_handle.remove()
        del m._o1lora_slot_handle
        delattr(m, SWITCH)
        delattr(m, DOWN)
        delattr(m, UP)
    setattr(model, SLOTS_ATTR, {})
    setattr(model, ACTIVE_ATTR, set())


def lora_slots(model: nn.Module) -> dict[str, nn.Module]:
    return getattr(model, SLOTS_ATTR, {})


def slot_capacity(model: nn.Module) -> int:
    slots = lora_slots(model)
    return getattr(next(iter(slots.values())), DOWN).shape[0] if slots else 0


@torch.no_grad()
def fill_slots(
    model: nn.Module, parts: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]]
) -> dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]]:
    """Write each module's (down, up, scale) list into its slots, concatenated along the rank in order;
    zero the slots of modules no longer used. Returns what does not fit (no slot on that module, or more
    ranks than the capacity), for the caller to apply another way."""
    slots, active = lora_slots(model), getattr(model, ACTIVE_ATTR, set())
    rest, filled = {}, set()
    for path, pairs in parts.items():
        m = slots.get(path)
        down_buf = None if m is None else getattr(m, DOWN)
        if m is None or sum(d.shape[0] for d, _, _ in pairs) > down_buf.shape[0]:
            rest[path] = pairs
            continue
        up_buf, off = getattr(m, UP), 0
        for down, up, scale in pairs:
            r = down.shape[0]
            down_buf[off : off + r].copy_(down)
            up_buf[:, off : off + r].copy_(up).mul_(scale)
            off += r
        down_buf[off:].zero_()
        up_buf[:, off:].zero_()
        filled.add(path)
    for path in active - filled:
        getattr(slots[path], DOWN).zero_()
        getattr(slots[path], UP).zero_()
    setattr(model, ACTIVE_ATTR, filled)
    if slots:
        _switch(model).on = bool(filled)
    return rest


def _switch(model: nn.Module) -> SlotSwitch:
    return getattr(next(iter(lora_slots(model).values())), SWITCH)


def slots_on(model: nn.Module) -> bool:
    """Whether the slots run (some LoRA is active in them)."""
    return bool(lora_slots(model)) and _switch(model).on


@contextmanager
def slots_forced_on(model: nn.Module) -> Iterator[None]:
    """Run the slots even with none filled (zeros add exact zeros): a warm-up compiles the step's
    "LoRA active" variant before any request needs it. No-op on a model without slots."""
    if not lora_slots(model):
        yield
        return
    sw = _switch(model)
    before, sw.on = sw.on, True
    try:
        yield
    finally:
        sw.on = before
