"""Logged training values read on the host one step late, so that logging never leaves the GPU idle.

A step's loss lives on the GPU until the step has run. Reading it at once (`float(loss)`, `.item()`) makes the
host wait for the GPU to finish, and the GPU then idles while the host prepares and queues the next step.
Instead, at a logged step the trainer pushes the values here: they are copied into pinned host memory behind
that step's work (no wait) and an event marks the copy. After the next step has been queued, `take` waits for
that event: the GPU has the next step to run meanwhile, so the wait costs it nothing.

    reports = StepReports(device)
    reports.push(step, values, lr=..., sec=...)      # after queuing a logged step
    for step, values, extra in reports.take(before_step=trainer.step): ...   # after queuing the next one
    reports.take()                                   # everything, before checkpoints, validation, the end

Delivery depends on step numbers only, never on timing, so every rank of a multi-GPU job reads a logged step's
values (and the stop request they carry) at the same step. On the CPU the copy is plain and the event is
omitted; the order of deliveries is the same as on a GPU.
"""

from __future__ import annotations

from collections import deque

import torch


class StepReports:
    def __init__(self, device: torch.device):
        self.device = device
        self._pending: deque = deque()  # (step, host tensor, event or None, extra)

    def push(self, step: int, values: torch.Tensor, **extra) -> None:
        """Queue the copy of `values` (a small device tensor) for step `step`; returns without waiting."""
        values = values.detach()
        event = None
        if values.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = values.clone()
        self._pending.append((step, host, event, extra))

    def take(self, before_step: int | None = None) -> list[tuple[int, list[float], dict]]:
        """The reports of the steps before `before_step` (all of them when None), oldest first, as Python
        floats; waits for their copies (see the module doc for why that wait is free)."""
        out = []
        while self._pending and (before_step is None or self._pending[0][0] < before_step):
            step, host, event, extra = self._pending.popleft()
            if event is not None:
                event.synchronize()
            out.append((step, host.tolist(), extra))
        return out

    def __len__(self) -> int:
        return len(self._pending)
