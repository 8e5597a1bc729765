"""Block offload: N decoder layers' frozen weights live in (pinned) host memory and are streamed to the GPU.

    model = load_model(path, torch.bfloat16, "cuda", offload_blocks=8)   # read to the host, installed
    BlockOffload(model, 8)                                               # or on a model already built

Two device buffers ("slots"), each the size of one offloaded layer, take turns: when an offloaded layer starts
(a forward pre-hook), its weights must be in a slot (they normally are: prefetched), and the copy of the next
offloaded layer into the other slot is queued on a side CUDA stream, so that it overlaps the compute of this
layer and of the resident layers up to that one. Events order the two streams: a copy waits until the main
stream has passed the point where the slot's previous layer was last used; a layer waits for its own copy.

Which layers: spread evenly over the depth (`offloaded_layers`), so that between two offloaded layers there are
resident ones whose compute hides the next copy (a layer's weights take longer to cross PCIe than to multiply).

What comes next (the schedule):
- no gradient (generation, validation): the layers run in order, step after step, so the next one is the next
  offloaded layer, wrapping around to the first for the next step;
- training: forward in order, then the backward recomputes the layers from the last to the first (gradient
  checkpointing, which offload requires: without it autograd would keep references to slot memory that the
  next copies overwrite). Inside the backward (an autograd graph task is running) the next one is the
  previous offloaded layer; the first one stays in its slot for the next step's forward.
A wrong guess costs time only: a layer that is not in a slot when it starts is copied then and waited for.

The offloaded layers run eagerly (model._run_layers skips the compiled layer function for them): a compiled
graph would keep the slot tensors it was traced with. On a CPU the same schedule runs with plain copies
between host tensors and CPU slots (what the tests check: the order of copies, and outputs and gradients
equal to the model without offload).
"""

from __future__ import annotations

from collections import deque

import torch
from torch import nn

OFFLOADED_ATTR = "_o1_offloaded"  # set on each offloaded layer; core.model runs those eagerly
_ALIGN = 256  # bytes: every tensor in a slot starts aligned (any dtype's view is then valid)


def offloaded_layers(n_layers: int, n_blocks: int) -> list[int]:
    """Indices of the n_blocks layers to offload, spread evenly over n_layers (all of them when n >= layers)."""
    if n_blocks < 0:
        raise ValueError(f"offload_blocks must be >= 0, got {n_blocks}")
    if n_blocks == 0:
        return []
    if n_blocks >= n_layers:
        return list(range(n_layers))
    return [int((k + 0.5) * n_layers / n_blocks) for k in range(n_blocks)]


def _in_backward() -> bool:
    """True while autograd's engine runs a backward (i.e. a checkpointed layer is being recomputed)."""
    return torch._C._current_graph_task_id() != -1


class BlockOffload:
    """Installs itself on `model` (its decoder layers); `events` records the schedule (tests read it).

    Every parameter of an offloaded layer moves to the host except LoRA weights (trained: the optimizer
    holds them). While its layer is in no slot a parameter holds an empty tensor on the device, so code that
    looks at `weight.device` (PEFT, LoRA slots and binding) still finds the device."""

    def __init__(self, model: nn.Module, n_blocks: int, device=None):
        layers = model.model.language_model.layers
        self.model = model
        self.indices = offloaded_layers(len(layers), n_blocks)
        self.device = torch.device(device) if device is not None else model.device
        self.cuda = self.device.type == "cuda"
        self.events: deque = deque(maxlen=10_000)  # ("fetch", layer, "prefetch" | "demand") / ("enter", layer)
        # per layer: [(param, host copy, byte offset in a slot, nbytes)]
        self.plan: dict[int, list[tuple[nn.Parameter, torch.Tensor, int, int]]] = {}
        size = 0
        for i in self.indices:
            entries, off = [], 0
            for name, p in layers[i].named_parameters():
                if "lora_" in name:  # LoRA weights train: the optimizer holds them, they stay on the device
                    continue
                host = p.data if p.device.type == "cpu" else p.data.to("cpu")
                if self.cuda:
                    host = host.pin_memory()  # asynchronous DMA needs page-locked memory
                n = host.numel() * host.element_size()
                entries.append((p, host, off, n))
                off += -(-n // _ALIGN) * _ALIGN
            self.plan[i] = entries
            size = max(size, off)
        self.slot_bytes = size
        n_slots = min(2, len(self.indices))
        self.slots = [torch.empty(size, dtype=torch.uint8, device=self.device) for _ in range(n_slots)]
        self.held: list[int | None] = [None] * n_slots  # slot -> layer
        self.ready: list[torch.cuda.Event | None] = [None] * n_slots
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._current: int | None = None
        for i in self.indices:
            for p, *_ in self.plan[i]:
                p.data = self._placeholder(p)
            setattr(layers[i], OFFLOADED_ATTR, True)
            layers[i]._o1_offload_hook = layers[i].register_forward_pre_hook(self._hook(i))
        model._o1_block_offload = self

    # -- memory -------------------------------------------------------------------------------------------
    def _placeholder(self, p: torch.Tensor) -> torch.Tensor:
        """What an offloaded parameter holds while its layer is in no slot: nothing (a use fails loudly)."""
        return torch.empty(0, dtype=p.dtype, device=self.device)

    @property
    def host_bytes(self) -> int:
        return sum(n for entries in self.plan.values() for _, _, _, n in entries)

    @property
    def device_bytes(self) -> int:
        return self.slot_bytes * len(self.slots)

    def slot_of(self, layer: int) -> int | None:
        return self.held.index(layer) if layer in self.held else None

    # -- the schedule ---------------------------------------------------------------------------------------
    def next_layer(self, i: int, grad: bool, backward: bool) -> int | None:
        """The offloaded layer expected after offloaded layer i (None: the one in the other slot is fine)."""
        k = self.indices.index(i)
        if not grad:
            return self.indices[(k + 1) % len(self.indices)]
        if backward:
            return self.indices[k - 1] if k > 0 else None
        return self.indices[k + 1] if k + 1 < len(self.indices) else None

    def _hook(self, i: int):
        def before_layer(module, args):
            self.enter(i)

        return before_layer

    def enter(self, i: int) -> None:
        grad = torch.is_grad_enabled() and self.model.training
        backward = _in_backward()
        if grad and not backward and not getattr(self.model, "gradient_checkpointing", False):
            raise RuntimeError(
                "block offload in training needs gradient checkpointing (autograd would otherwise keep "
                "references to slot memory that the next copies overwrite)"
            )
        self.events.append(("enter", i))
        slot = self.slot_of(i)
        if slot is None:  # not prefetched: copy now, into the slot the previous layer is not in
            avoid = self.slot_of(self._current) if self._current is not None else None
            slot = 0 if avoid != 0 else 1 % len(self.slots)
            self._fetch(i, slot, "demand")
        if self.cuda and self.ready[slot] is not None:
            torch.cuda.current_stream(self.device).wait_event(self.ready[slot])
        self._current = i
        nxt = self.next_layer(i, grad, backward)
        if nxt is not None and nxt != i and self.slot_of(nxt) is None and len(self.slots) > 1:
            self._fetch(nxt, 1 - slot, "prefetch")

    def _fetch(self, layer: int, slot: int, why: str) -> None:
        old = self.held[slot]
        if old is not None:
            for p, *_ in self.plan[old]:
                p.data = self._placeholder(p)
        buf = self.slots[slot]
        views = [buf[off : off + n].view(host.dtype).view(host.shape) for _, host, off, n in self.plan[layer]]
        if self.cuda:
            free = torch.cuda.Event()
            free.record(torch.cuda.current_stream(self.device))  # the main stream is done with `old` after here
            with torch.cuda.stream(self.stream):
                self.stream.wait_event(free)
                for v, (_, host, _, _) in zip(views, self.plan[layer]):
                    v.copy_(host, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.stream)
            self.ready[slot] = done
        else:
            for v, (_, host, _, _) in zip(views, self.plan[layer]):
                v.copy_(host)
        for v, (p, *_) in zip(views, self.plan[layer]):
            p.data = v
        self.held[slot] = layer
        self.events.append(("fetch", layer, why))

    def remove(self) -> None:
        """Back to a resident model: every offloaded weight copied to the device for good, hooks gone."""
        layers = self.model.model.language_model.layers
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        for i in self.indices:
            for p, host, _, _ in self.plan[i]:
                p.data = host.to(self.device)
            layers[i]._o1_offload_hook.remove()
            delattr(layers[i], OFFLOADED_ATTR)
        self.slots, self.held = [], []
        del self.model._o1_block_offload


def block_offload(model: nn.Module) -> BlockOffload | None:
    return getattr(model, "_o1_block_offload", None)
