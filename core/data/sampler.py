"""BucketBatchSampler: batches of one aspect bucket, in a deterministic order that can be resumed exactly.

    sampler = BucketBatchSampler(ds, batch_size=4, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_batch, num_workers=2)
    for batch in loader: ...                   # one epoch per iter(); the next iter() starts the next epoch
    state = sampler.state_after(batches_done)  # {"epoch", "position", ...} after the trainer consumed that many
    sampler.load_state_dict(state)             # a resumed run then yields exactly the batches that followed

Epoch e's order is a function of (seed, e) only: each bucket's keys are permuted, cut into batches, and the
batches shuffled. Keys are e * len(ds) + j, so the dataset re-draws flips and caption dropout every epoch.
Why state_after(n) rather than "where the sampler is": a DataLoader with workers pulls batches ahead of
the training loop, so only the trainer knows how many were really used.
With world_size > 1 (DDP) each rank takes every world_size-th batch of the same epoch order.

A resume on another number of ranks keeps the data position: a state also says how many batches of its
epoch's shared order all ranks together have used ("consumed"), and the new ranks deal the rest of that epoch
among themselves from there (this epoch's deal then starts at `start`); the epochs after it are dealt as usual.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[int]]):
    def __init__(self, dataset, batch_size: int, seed: int = 0, drop_last: bool = False, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
        self.n = len(dataset)
        self.batch_size, self.seed, self.drop_last, self.shuffle = batch_size, seed, drop_last, shuffle
        self.rank, self.world_size = rank, world_size
        groups: dict[tuple[int, int], list[int]] = {}
        for j in range(self.n):
            groups.setdefault(tuple(dataset.bucket(j)), []).append(j)
        self.groups = [groups[b] for b in sorted(groups)]
        self.epoch, self.position = 0, 0
        self.start = 0  # where in the current epoch's shared order this run's deal began (0 unless resumed)
        self._base = (0, 0, 0, 0)  # (epoch, start, position, batches done) that state_after counts from
        self._shared = len(self._epoch_order(0))  # batches per epoch over all ranks
        self._per_epoch = self._shared // world_size  # the same for every epoch: only the order changes
        if self._per_epoch == 0:
            raise ValueError(f"no full batch of {batch_size} in any bucket (sizes {[len(g) for g in self.groups]}, "
                             f"world_size {world_size}); lower batch_size or set drop_last=False")

    def _epoch_order(self, epoch: int) -> list[list[int]]:
        """Every batch of `epoch`, in the order all ranks share, as dataset keys."""
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for keys in self.groups:
            order = rng.permutation(len(keys)) if self.shuffle else np.arange(len(keys))
            ks = [keys[i] for i in order]
            for s in range(0, len(ks), self.batch_size):
                b = ks[s:s + self.batch_size]
                if len(b) == self.batch_size or not self.drop_last:
                    batches.append([epoch * self.n + j for j in b])
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _count(self, start: int) -> int:
        """Batches per rank in an epoch dealt from `start`: the same on every rank, or DDP's collectives hang
        on the rank that runs out first (the few left over are skipped)."""
        return (self._shared - start) // self.world_size

    def epoch_batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        """This rank's batches of `epoch`, in order, as dataset keys: every world_size-th from `start` on."""
        batches = self._epoch_order(epoch)
        return [batches[start + self.rank + k * self.world_size] for k in range(self._count(start))]

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self._per_epoch

    def __iter__(self):
        # Runs the rest of the current epoch, then moves on: the next iter() starts the next epoch.
        batches = self.epoch_batches(self.epoch, self.start)
        while self.position < len(batches):
            b = batches[self.position]
            self.position += 1
            yield b
        self.epoch, self.start, self.position = self.epoch + 1, 0, 0

    def _state(self, epoch: int, position: int, start: int = 0, batches: int | None = None) -> dict:
        state = {"epoch": epoch, "position": position, "start": start, "world_size": self.world_size,
                 "consumed": start + position * self.world_size, "seed": self.seed, "batch_size": self.batch_size,
                 "num_keys": self.n, "batches_per_epoch": len(self), "shared_batches_per_epoch": self._shared}
        if batches is not None:
            state["batches"] = batches
        return state

    def state_dict(self) -> dict:
        """Where the sampler itself is (exact when the loader has no workers prefetching ahead)."""
        return self._state(self.epoch, self.position, self.start)

    def state_after(self, batches_done: int) -> dict:
        """The state after this rank used `batches_done` batches in all (what a trainer saves; the count goes on
        across resumes)."""
        epoch, start, position, done = self._base
        n = batches_done - done
        if n < 0:
            raise ValueError(f"state_after({batches_done}): this sampler was resumed at {done} batches")
        left = self._count(start) - position  # in the epoch the count starts in
        if n < left:
            return self._state(epoch, position + n, start, batches_done)
        n -= left
        return self._state(epoch + 1 + n // self._per_epoch, n % self._per_epoch, 0, batches_done)

    def load_state_dict(self, state: dict) -> None:
        world = int(state.get("world_size", self.world_size))
        now = self._state(0, 0)
        same_world = world == self.world_size
        # per-rank batches per epoch depend on the number of ranks; the shared count does not
        keys = ("seed", "batch_size", "num_keys", "shared_batches_per_epoch") + (("batches_per_epoch",) if same_world else ())
        for k in keys:
            if k in state and state[k] != now[k]:
                raise ValueError(f"cannot resume: the sampler's {k} was {state[k]}, now "
                                 f"{now[k]} (dataset or batch size changed since the checkpoint)")
        epoch, position, start = int(state["epoch"]), int(state["position"]), int(state.get("start", 0))
        if not same_world:  # re-deal the rest of this epoch's shared order among this run's ranks
            start, position = start + position * world, 0
        if position >= self._count(start):  # nothing of this epoch left for this many ranks
            epoch, start, position = epoch + 1, 0, 0
        self.epoch, self.start, self.position = epoch, start, position
        # a state without "batches" comes from a run that never changed its number of ranks: count from zero
        self._base = (epoch, start, position, int(state["batches"])) if "batches" in state else (0, 0, 0, 0)
