"""Where training batches come from: a dataset folder/zip, or an endless on-the-fly generator.

Both give (images [B, 3, H, W] in [-1, 1], captions [B]) forever and can be resumed exactly: the trainer
saves `state_after(batches_done)` in each checkpoint and hands it back to `load_state_dict` on resume.
A folder of edit / personalisation samples gives (images, captions, references [B]: each sample's reference
images prepared for the batch's size (core.layout.References, [] when it has none), reference keys [B]:
(sample name, flipped) or None, what the trainer caches the vision tower's features by).

    FolderData(cfg)                         # core.data: validation, aspect buckets, resumable bucket sampler
    StreamData(make_stream, batch_size)     # make_stream(start) -> iterator of (image [3, H, W], caption),
                                            # starting at item `start` (e.g. core.synth scenes for pretraining)
    Prefetch(iter(data), depth)             # the same batches, produced `depth` ahead on a thread
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import torch


class FolderData:
    """A dataset folder or zip through core.data; one DataLoader epoch after another."""

    def __init__(
        self,
        source,
        *,
        resolution: int,
        batch_size: int,
        trigger: str = "",
        repeats: int = 1,
        flip: bool = False,
        caption_dropout: float = 0.0,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        min_side: int = 256,
        rank: int = 0,
        world_size: int = 1,
        dataset=None,
        reference_dropout: float = 0.0,
    ):
        from core.data import BucketBatchSampler, TrainDataset

        # `dataset`: an already scanned TrainDataset (the trainer's, with validation images held out of it)
        self.dataset = (
            dataset
            if dataset is not None
            else TrainDataset(
                source,
                resolution=resolution,
                trigger=trigger,
                repeats=repeats,
                flip=flip,
                caption_dropout=caption_dropout,
                seed=seed,
                cache=True,
                min_side=min_side,
                reference_dropout=reference_dropout,
            )
        )
        # with several ranks each takes every world_size-th batch of one shared epoch order
        self.sampler = BucketBatchSampler(
            self.dataset, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size
        )
        self.num_workers, self.pin_memory = num_workers, pin_memory

    def state_after(self, batches_done: int) -> dict:
        return self.sampler.state_after(batches_done)

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        from torch.utils.data import DataLoader

        from core.data import collate_batch
        from core.train.references import prepared_references

        loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            collate_fn=collate_batch,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )  # keeps each worker's image cache
        while True:  # each pass over the loader is one epoch; the sampler moves on to the next by itself
            for batch in loader:
                if self.dataset.has_references:
                    h, w = batch["images"].shape[-2:]
                    refs = prepared_references(batch["references"], h, w)  # here: on Prefetch's thread
                    yield batch["images"], batch["captions"], refs, batch["reference_keys"]
                else:
                    yield batch["images"], batch["captions"]


class StreamData:
    """Batches from an endless stream of (image, caption); resumes by restarting the stream at an index."""

    def __init__(self, make_stream: Callable[[int], Iterator[tuple[torch.Tensor, str]]], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.make_stream, self.batch_size = make_stream, batch_size
        self.start = 0  # index of the first item the next iteration yields
        self.offset = 0  # where this rank's items begin (several ranks: disjoint index ranges)

    def shard(self, rank: int, world: int) -> None:
        """Give rank r the items r * 2^40 + k: an endless seeded stream needs no coordination."""
        self.offset = rank << 40

    def state_after(self, batches_done: int) -> dict:
        return {"items": batches_done * self.batch_size, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("batch_size", self.batch_size) != self.batch_size:
            raise ValueError(
                f"cannot resume: the stream's batch size was {state['batch_size']}, now {self.batch_size}"
            )
        self.start = int(state["items"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        stream = iter(self.make_stream(self.offset + self.start))
        while True:
            items = []
            for _ in range(self.batch_size):
                try:
                    items.append(next(stream))
                except StopIteration:
                    raise ValueError("the training stream ended; StreamData wants an endless stream") from None
            shapes = {tuple(img.shape) for img, _ in items}
            if len(shapes) != 1:
                raise ValueError(f"one batch needs one image shape; the stream gave {sorted(shapes)}")
            yield torch.stack([img for img, _ in items]), [cap for _, cap in items]


class Prefetch:
    """Iterate `source` on a daemon thread, `depth` batches ahead, in pinned host memory when CUDA is up.

    The trainer's loop never waits for image decoding (PIL and torch release the GIL while they work), and
    the images' host-to-device copy can be asynchronous. Order and values are exactly the source's, so a
    resumed run is unchanged (checkpoints count consumed batches, not produced ones). An exception in the
    source is raised by the next `next()`. `close()` stops the thread (the trainer calls it when its loop
    ends, so a long-lived worker process keeps no thread nor decoded images per finished job).
    """

    _END = object()

    def __init__(self, source: Iterator, depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._source = source
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._pin = torch.cuda.is_available()
        self._thread = threading.Thread(target=self._run, name="train-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for images, *rest in self._source:  # (images, captions) or (images, captions, references)
                if self._pin and not images.is_pinned():
                    images = images.pin_memory()
                if not self._put((images, *rest)):
                    return
            self._put(self._END)
        except BaseException as e:  # handed to the consumer, raised there
            self._put(e)

    def __iter__(self) -> "Prefetch":
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            self._queue.put(item)  # stays exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
