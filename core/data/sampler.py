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
        self._per_epoch = len(self.epoch_batches(0))   # the same for every epoch: only the order changes
        if self._per_epoch == 0:
            raise ValueError(f"no full batch of {batch_size} in any bucket (sizes {[len(g) for g in self.groups]}, "
                             f"world_size {world_size}); lower batch_size or set drop_last=False")

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch`, in order, as dataset keys."""
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
        if self.world_size > 1:
            # Same count on every rank, or DDP's collectives hang on the rank that runs out first.
            usable = len(batches) - len(batches) % self.world_size
            batches = batches[self.rank:usable:self.world_size]
        return batches

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self._per_epoch

    def __iter__(self):
        # Runs the rest of the current epoch, then moves on: the next iter() starts the next epoch.
        batches = self.epoch_batches(self.epoch)
        while self.position < len(batches):
            b = batches[self.position]
            self.position += 1
            yield b
        self.epoch, self.position = self.epoch + 1, 0

    def _state(self, epoch: int, position: int) -> dict:
        return {"epoch": epoch, "position": position, "seed": self.seed, "batch_size": self.batch_size,
                "num_keys": self.n, "batches_per_epoch": len(self)}

    def state_dict(self) -> dict:
        """Where the sampler itself is (exact when the loader has no workers prefetching ahead)."""
        return self._state(self.epoch, self.position)

    def state_after(self, batches_done: int) -> dict:
        """The state after `batches_done` batches since epoch 0 position 0 (what a trainer saves)."""
        per = len(self)
        return self._state(batches_done // per, batches_done % per)

    def load_state_dict(self, state: dict) -> None:
        for k in ("seed", "batch_size", "num_keys", "batches_per_epoch"):
            if k in state and state[k] != self._state(0, 0)[k]:
                raise ValueError(f"cannot resume: the sampler's {k} was {state[k]}, now "
                                 f"{self._state(0, 0)[k]} (dataset or batch size changed since the checkpoint)")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
