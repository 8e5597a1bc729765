"""Several GPUs of one host for one training job: PyTorch DDP, started by torchrun.

    torchrun --nproc_per_node 4 -m core.train --data_dir photos/ --out_dir runs/style ...

Each rank trains on its own share of the batches (core.data's sampler deals every world_size-th batch
of one shared epoch order) with its own noise stream; the adapter gradients are averaged over the ranks.
Rank 0 alone writes checkpoints, previews and exports and runs the callbacks; the others wait at barriers.
A stop request is decided on rank 0 and agreed through the logged step's collective (see `logged_values`),
so every rank leaves the loop at the same step. Single-process runs never touch torch.distributed.

How gradients are averaged (TrainConfig.grad_sync):
  overlap  DDP: the reducer's autograd hooks all-reduce a bucket of gradients as soon as backward has
           produced it, while backward goes on through earlier layers. Backward runs the last decoder layer
           first, so the buckets fill in that order; buckets are sized from the trained parameters
           (`bucket_cap_mb`), so that the one all-reduce left after the last gradient is a small share.
           static_graph where it holds (`static_graph_ok`).
  after    one flat all-reduce of every gradient after the step's last backward (`average_gradients`):
           nothing overlaps, but any number of forwards may feed one backward (reference-image samples in
           a batch) and it is the plain reference the overlapped path is tested against.
Why DDP rather than a hand-written flat bucket with hooks: only the LoRA parameters train (a rank-16 adapter
of the full model is ~44M float32 values, ~175 MB of gradients), DDP's C++ reducer already launches its buckets
in one fixed order on every rank (a hand-made hook scheme must guarantee that itself, or the collectives
mismatch) and works with the compiled decoder layers and gradient checkpointing (the hooks sit on the
parameters' gradient accumulators, which run once per backward however the layer was compiled or recomputed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (nothing when WORLD_SIZE is 1/unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's decision, on every rank (a collective and a host sync: for rare decisions such as early stop)."""
    if not info.active:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def logged_values(loss: torch.Tensor, stop: bool, info: DistInfo) -> torch.Tensor:
    """[mean loss over the ranks, 1.0 when any rank asks to stop] as one device tensor, without a host sync.

    One all-reduce per logged step carries both the loss and rank 0's stop request: every rank reads the same
    values (core.train.readout, one step later) and so stops at the same step."""
    values = torch.stack([loss.detach().reshape(()).float(), torch.full((), float(stop), device=loss.device)])
    if info.active:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values[0] /= info.world
    return values


def bucket_cap_mb(params, buckets: int = 8) -> float:
    """DDP bucket size for these trained parameters: about `buckets` buckets (1-25 MB each).

    DDP's default (25 MB) puts a rank-4 adapter of the full model (~44 MB of float32 gradients) in two buckets,
    so half of the all-reduce waits for the end of backward; eight buckets leave an eighth exposed. Each
    bucket is one collective (tens of microseconds to launch), so more buckets stop paying off quickly."""
    total = sum(p.numel() * p.element_size() for p in params) / 2**20
    return float(min(25.0, max(1.0, total / buckets)))


def static_graph_ok(grad_accum: int, one_forward_per_backward: bool) -> bool:
    """Whether DDP's static_graph holds for this run. It needs the same parameters used in the same way every
    step: true of the trainer's steps (the compiled decoder layers and gradient checkpointing included; frozen
    parameters are not DDP's), but DDP (torch 2.13) fails an internal assertion when no_sync() (the first
    micro-batches of a grad_accum step) meets a static graph, and samples with reference images change the
    step's graph with their reference counts. The gain is small either way: it skips the first iteration's
    graph search and lets DDP order its buckets by the first backward."""
    return grad_accum == 1 and one_forward_per_backward


def wrap_ddp(model: torch.nn.Module, params, info: DistInfo, device: torch.device, static_graph: bool):
    """The model under DDP for the overlapped all-reduce (grad_sync "overlap")."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    kw = dict(
        device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=bucket_cap_mb(params),
        # gradients live in DDP's buckets: no copy into and out of them around the all-reduce
        gradient_as_bucket_view=True,
        static_graph=static_graph,
    )
    # The frozen base's buffers (rotary frequencies) are constants: no per-forward broadcast. torch 2.13 renamed
    # the switch (forward_sync_buffers); 2.11, on the GPU machines, only has broadcast_buffers.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kw["forward_sync_buffers"] = False
    else:
        kw["broadcast_buffers"] = False
    return DistributedDataParallel(model, **kw)


def average_gradients(params, info: DistInfo) -> None:
    """The plain path (grad_sync "after"): every gradient averaged over the ranks by one flat all-reduce after
    backward. Divided before summing, as DDP does, so both paths round alike. A parameter without a gradient on
    this rank takes part as zeros (the collective needs the same sizes everywhere)."""
    if not info.active:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat /= info.world
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g)
        offset += n


def gather_objects(obj, info: DistInfo) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (small Python objects such as RNG states)."""
    if not info.active:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()
