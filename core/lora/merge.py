"""LoRAs merged into the base weights, with the base kept aside so that taking them out is exact.

    n = install_lora_merging(model)             # once: a copy of every targeted linear's weight is kept
    set_loras(model, [(a, 1.0), (b, 0.5)])      # core.lora.apply merges: W = base + sum(scale * up @ down)
    clear_loras(model)                          # every merged weight copied back from its kept base

Why: a LoRA as extra matmuls beside each linear (hooks, or core.lora.slots) costs +15% per denoising step at
full size on an H200 (bench/RESULTS.md: two skinny GEMMs per linear, 504 per step), whatever the rank. Merged,
a LoRA costs nothing per step: the compiled step multiplies by the same weight tensors, only their values
changed (written in place, so torch.compile sees the same inputs and never recompiles). A switch is one
float32 merge per linear, milliseconds on a GPU. Merging used to be avoided here because merge then un-merge
in bfloat16 drifts the base on every swap; keeping the base values makes un-merging a copy, bit-exact, and
every merge starts from the kept base, never from a previous merge.

The price is memory: the kept copy is as large as the targeted weights (12.9 GiB of a bf16 base at full size).
The generation worker merges only where its memory plan finds room for that copy (worker/model_host.py), else
it uses the slots. A merged weight is the LoRA-ed weight rounded once to the base's dtype, which is what a
model saved with the LoRA fused in would hold. Offloaded layers (core.offload) cannot be merged: their weights
live on the host and are streamed.

An fp8 linear (core.fp8) is re-quantised with fresh per-channel scales. From what is it re-quantised? Its own
fp8 values are a poor start: a LoRA's delta is mostly smaller than half an e4m3 step, so rounding
fp8(W) + delta back to e4m3 returns fp8(W) for most elements and the LoRA is lost (a style LoRA on the bundled
model scored 0.181 merged against 0.198 beside the linears). Rounding W + delta from the full-precision W
(`full_weights`, read again from the checkpoint) is unbiased instead: where the delta moves W across a
rounding boundary the fp8 value moves, as often as the delta's size says, which is an fp8 checkpoint of the
merged model. The kept copy is then the full-precision weights (12.9 GiB again, not 6.5), and un-merging
re-quantises them: deterministic, so bit for bit the weights that were loaded.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from core.lora.slots import SLOT_PATTERN

MERGE_ATTR = "_o1lora_merging"  # model attribute: its LoraMerging


class LoraMerging:
    """One model's kept base weights and what is merged into it now."""

    def __init__(self, modules: dict[str, nn.Module], backup_device: torch.device | None):
        self.modules = modules  # every module of the model by path
        self.backup_device = backup_device
        # path -> (weight, fp8 scale); an fp8 linear kept in full precision: (its full weight, None)
        self.base: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.merged: set[str] = set()
        self.current: list[tuple[object, float]] = []  # the (BoundLora, scale) list merged now

    @torch.no_grad()
    def keep(self, path: str, full: torch.Tensor | None = None) -> None:
        """Keep the base values of one linear (first time it is targeted); `full`: an fp8 linear's weight in full
        precision, as it was quantised when loaded (see the module doc)."""
        if path in self.base:
            return
        m = self.modules[path]
        dev = self.backup_device or m.weight.device
        if full is not None:
            if not _is_fp8(m) or tuple(full.shape) != tuple(m.weight.shape):
                raise ValueError(f"{path}: a full-precision weight is kept only for an fp8 linear of its shape")
            self.base[path] = (full.detach().to(dev), None)
            return
        scale = getattr(m, "weight_scale", None)
        self.base[path] = (
            m.weight.detach().to(dev, copy=True),
            None if scale is None else scale.detach().to(dev, copy=True),
        )

    @torch.no_grad()
    def restore(self, path: str) -> None:
        from core.fp8 import quantize_weight

        m, (w, scale) = self.modules[path], self.base[path]
        if _is_fp8(m) and scale is None:  # kept in full precision: quantising it again gives the loaded weight
            q, scale = quantize_weight(w.to(m.weight.device))
            m.weight.copy_(q)
            m.weight_scale.copy_(scale)
            return
        m.weight.copy_(w)
        if scale is not None:
            m.weight_scale.copy_(scale)

    @torch.no_grad()
    def merge(self, path: str, pairs: list[tuple[torch.Tensor, torch.Tensor, float]]) -> None:
        """The module's weight := its base + every (down, up, scale) delta, summed in float32, rounded once."""
        from core.fp8 import dequantize_weight, quantize_weight

        self.keep(path)
        m, (w, scale) = self.modules[path], self.base[path]
        dev = m.weight.device
        # a new float32 tensor in both cases (w.float() of a float32 base would be the kept base itself)
        full = dequantize_weight(w, scale, torch.float32) if scale is not None else w.to(torch.float32, copy=True)
        full = full.to(dev)
        for down, up, s in pairs:
            full.addmm_(up.to(dev, torch.float32), down.to(dev, torch.float32), alpha=float(s))
        if _is_fp8(m):
            q, new_scale = quantize_weight(full)
            m.weight.copy_(q)
            m.weight_scale.copy_(new_scale)
        else:
            m.weight.copy_(full)

    def same_as_current(self, loras: Sequence[tuple[object, float]]) -> bool:
        """The same LoRA objects with the same scales, in the same order: nothing to do."""
        return len(loras) == len(self.current) and all(
            a is b and float(x) == float(y) for (a, x), (b, y) in zip(loras, self.current)
        )

    def backup_bytes(self) -> int:
        return sum(_bytes(w, scale) for w, scale in self.base.values())


def _is_fp8(module: nn.Module) -> bool:
    return hasattr(module, "weight_scale")  # core.fp8.Fp8Linear (not imported here: merge.py stays light)


def _bytes(weight: torch.Tensor, scale: torch.Tensor | None) -> int:
    """What keeping one linear's base costs: its weight and, for an fp8 linear, its scales."""
    return weight.numel() * weight.element_size() + (0 if scale is None else scale.numel() * scale.element_size())


def mergeable(module: nn.Module) -> bool:
    """A linear whose weight is a real 2-D tensor of this process (not an offloaded placeholder)."""
    w = getattr(module, "weight", None)
    return (
        isinstance(module, nn.Linear) and isinstance(w, torch.Tensor) and w.ndim == 2 and w.device.type != "meta"
    )


def kept_linears(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The linears install_lora_merging keeps a copy of: every LoRA-targetable one (the recipe's targets and the
    optional ones) that is mergeable."""
    rx = re.compile(SLOT_PATTERN)
    return ((path, m) for path, m in model.named_modules() if rx.fullmatch(path) and mergeable(m))


def merge_copy_bytes(model: nn.Module, full_precision: bool = True) -> int:
    """The memory install_lora_merging would keep aside on this model, before it does (a memory plan's input);
    full_precision: its fp8 linears are kept in full precision (in their compute dtype), as the worker does."""

    def kept(m: nn.Module) -> int:
        if _is_fp8(m) and full_precision:
            return m.weight.numel() * m.compute_dtype.itemsize
        return _bytes(m.weight, getattr(m, "weight_scale", None))

    return sum(kept(m) for _, m in kept_linears(model))


def full_weight_names(model: nn.Module) -> list[str]:
    """State-dict names of the fp8 linears' weights that install_lora_merging can keep in full precision (what to
    read again from the checkpoint: core.loading.read_weights)."""
    return [f"{path}.weight" for path, m in kept_linears(model) if _is_fp8(m)]


def install_lora_merging(
    model: nn.Module,
    backup_device: torch.device | str | None = None,
    full_weights: Iterable[tuple[str, torch.Tensor]] | None = None,
) -> int:
    """Keep a copy of every LoRA-targetable linear (the recipe's targets and the optional ones), so that
    set_loras merges into the weights from now on; returns how many linears are kept. backup_device: where the
    copies live (default: beside each weight). full_weights: (state-dict name, tensor) of fp8 linears' weights
    in full precision, cast as they were when loaded (core.loading.read_weights of full_weight_names): merges
    into those linears then round from them (module doc); fp8 linears not given keep their fp8 values.
    Refused on a model with offloaded layers."""
    if getattr(model, "_o1_block_offload", None) is not None:
        raise ValueError("LoRA merging needs every weight on the device: this model has offloaded layers")
    from core.lora.slots import lora_slots

    if lora_slots(model):
        raise ValueError("this model applies LoRAs through slots; remove them before installing merging")
    have = lora_merging(model)
    if have is not None:
        return len(have.base)
    merging = LoraMerging(
        dict(model.named_modules()), None if backup_device is None else torch.device(backup_device)
    )
    for name, tensor in full_weights or ():
        path = name.removesuffix(".weight")
        if path not in merging.modules or not mergeable(merging.modules[path]):
            raise ValueError(f"{name}: not the weight of a mergeable linear of this model")
        merging.keep(path, full=tensor)
    for path, _ in kept_linears(model):
        merging.keep(path)
    setattr(model, MERGE_ATTR, merging)
    return len(merging.base)


def lora_merging(model: nn.Module) -> LoraMerging | None:
    return getattr(model, MERGE_ATTR, None)


def merge_parts(
    model: nn.Module, parts: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]]
) -> dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]]:
    """Merge each module's deltas; restore modules merged before and not in `parts`. Returns the parts of
    modules that cannot be merged (not a plain on-device linear), for the caller to apply by hooks."""
    merging = lora_merging(model)
    rest, done = {}, set()
    for path, pairs in parts.items():
        if not mergeable(merging.modules[path]):
            rest[path] = pairs
            continue
        merging.merged.add(path)  # before the write: a failure part-way still gets this one restored later
        merging.merge(path, pairs)
        done.add(path)
    for path in merging.merged - done:
        merging.restore(path)
    merging.merged = done
    return rest


def remove_lora_merging(model: nn.Module) -> None:
    """Restore every merged weight and drop the kept copies (the memory comes back)."""
    merging = lora_merging(model)
    if merging is None:
        return
    for path in merging.merged:
        merging.restore(path)
    delattr(model, MERGE_ATTR)
