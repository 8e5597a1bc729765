"""A request's denoise step replayed as a CUDA graph, and that graph kept for the next request of its shapes.

    call = GraphedCall(fn)        # fn(*tensors): captured at its first call, replayed after
    kept = KeptSteps(capacity=1)  # the sampler's: graphs that outlive their request

Why keep them: a request's step is captured at its first call, which costs one eager run on a side stream (the
capture needs it), the capture itself (its launches run no kernels) and the graph's instantiation: 0.03 s of a
1024^2 image on an H200, 2.138 against 2.107 s side by side (bench/RESULTS.md). The next request whose step reads
tensors of the same shapes replays the kept graph from its first step: its prefix (the K/V of its prompts,
the positions, the lengths) is copied into the kept prefix's tensors, which the graph reads at fixed addresses,
as it reads its inputs.

A replay runs no Python and checks no guards, so the key holds everything a capture bakes in besides tensor
values: the shapes and dtypes of every tensor the step reads, the prefix's Python attributes, the compiled
function, and the LoRA state that changes the step's code (core.lora.capture_state; nothing is kept while
hooks carry a LoRA). Merged LoRAs and filled slots are values written in place: a kept graph reads them as they
are at its replay.

On a CPU there are no graphs: a GraphedCall then calls fn on its static input buffers every time, which is
what a replay computes, so the keeping logic runs the same there and the tests compare its images.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterator

import torch


class GraphedCall:
    """fn(*tensors) replayed as a CUDA graph, inputs copied into static buffers.

    The first call runs fn eagerly on a side stream (the warm-up capture needs, and already the real
    result), then captures it; later calls replay. The output tensor is reused by the next call (the
    sampler consumes it within its step). If capture fails (an op that syncs with the host, say), the
    reason is kept in `.failed` and the eager function is used from then on. Inputs must keep the first
    call's shapes and dtypes (a replay would read the old ones); another shape raises.
    """

    def __init__(self, fn: Callable):
        self.fn, self.graph, self.inputs, self.output, self.failed = fn, None, None, None, None
        self.replays = 0  # calls served without running fn's Python (tests and benches count them)

    def __call__(self, *args):
        if self.failed is not None:
            return self.fn(*args)
        if self.inputs is None:
            self.inputs = [a.clone() for a in args]
            if args[0].is_cuda:
                return self._warm_up_and_capture()
            self.graph = "static"  # no graphs here: fn on the static buffers, what a replay reads
            return self.fn(*self.inputs)
        for buf, a in zip(self.inputs, args):
            if buf.shape != a.shape or buf.dtype != a.dtype:
                raise ValueError(f"a graphed call's input changed from {tuple(buf.shape)} to {tuple(a.shape)}")
            buf.copy_(a)
        self.replays += 1
        if self.graph == "static":
            return self.fn(*self.inputs)
        self.graph.replay()
        return self.output

    def _warm_up_and_capture(self):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            result = self.fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.output = self.fn(*self.inputs)
            self.graph = graph
        except Exception as e:  # noqa: BLE001 - an optimisation only; eager is always correct
            self.failed = f"{type(e).__name__}: {e}"
            torch.cuda.synchronize()
        return result


def prefix_tensors(prefix) -> Iterator[torch.Tensor]:
    """Every tensor a denoise step reads from a core.model.PrefixCache, in a fixed order."""
    yield prefix.gen_position_ids
    if prefix.ar_lengths is not None:
        yield prefix.ar_lengths
    yield from prefix.kv_tensors()


def prefix_signature(prefix) -> tuple:
    """What a capture bakes in of a prefix besides its values."""
    return (
        prefix.n_ar,
        prefix.groups,
        prefix.ar_lengths is None,
        tuple((tuple(t.shape), t.dtype, t.device) for t in prefix_tensors(prefix)),
    )


def writable(prefix) -> bool:
    """Whether new values can be copied into the prefix's tensors (an expanded view cannot take them)."""
    return all(t.is_contiguous() for t in prefix_tensors(prefix))


class KeptSteps:
    """Graphed denoise calls kept past their request, with the prefixes they read; least recently used first out.

    Each holds its graph's memory (the step's activations at its size) between requests: `capacity` 1 keeps
    only the last request's, which a request of another shape frees before capturing its own."""

    def __init__(self, capacity: int = 1):
        self.capacity = capacity
        self._kept: OrderedDict[tuple, tuple[GraphedCall, list]] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._kept)

    @torch.no_grad()
    def take(self, key: tuple, prefixes: list) -> GraphedCall | None:
        """The call kept under `key`, with `prefixes`' values copied into the prefixes it reads; None if none is."""
        kept = self._kept.get(key)
        if kept is None or kept[0].failed is not None:
            self.misses += 1
            return None
        call, static = kept
        for dst_prefix, src_prefix in zip(static, prefixes):
            for dst, src in zip(prefix_tensors(dst_prefix), prefix_tensors(src_prefix), strict=True):
                dst.copy_(src)
        self._kept.move_to_end(key)
        self.hits += 1
        return call

    def keep(self, key: tuple, call: GraphedCall, prefixes: list) -> None:
        """Keep `call` (not captured yet) and the prefixes its function reads; first frees room for it, so that the
        graph it captures next can use the memory of the one it replaces."""
        if self.capacity < 1:
            return
        self._kept.pop(key, None)
        while len(self._kept) >= self.capacity:
            self._kept.popitem(last=False)
        self._kept[key] = (call, prefixes)

    def clear(self) -> None:
        self._kept.clear()
