"""The generation worker's resident state: one base model loaded once, and an LRU of LoRAs bound to it.

A LoRA is applied by forward hooks (core.lora.set_loras), so switching LoRAs between generations costs a
few small tensors, never a reload of the 8B base. Bound LoRAs are kept by id, least recently used first
out once more than `capacity` are held.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


def pick_device() -> tuple[str, "object"]:
    """CUDA in bfloat16 when there is a GPU, else the CPU in float32 (bf16 matmuls are slow on CPUs)."""
    import torch
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


class ModelHost:
    """Loads the base model on first use (in the worker process, never in a forking parent)."""

    def __init__(self, model_path: Path, lora_capacity: int):
        self.model_path = Path(model_path)
        self.capacity = lora_capacity
        self._model = self._tokenizer = None
        self._loras: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times the base was loaded (tests check it stays 1 across LoRA swaps)

    def model(self):
        with self._lock:
            if self._model is None:
                from core.loading import load_model, load_tokenizer
                device, dtype = pick_device()
                log.info("loading base model %s on %s", self.model_path, device)
                self._tokenizer = load_tokenizer(self.model_path)
                self._model = load_model(self.model_path, dtype=dtype, device=device, tokenizer=self._tokenizer)
                self.loads += 1
            return self._model

    def release(self) -> bool:
        """Drop the base and the bound LoRAs (a training needs the GPU); the next model() loads it again.
        True when a model was held. The caller frees the GPU memory (gc + torch.cuda.empty_cache)."""
        with self._lock:
            held = self._model is not None
            self._model = self._tokenizer = None
            self._loras.clear()
        return held

    @property
    def tokenizer(self):
        self.model()
        return self._tokenizer

    def lora(self, lora_id: str, local_file: Callable[[], Path]):
        """The BoundLora for `lora_id`, binding it from `local_file()` when it is not held already."""
        if lora_id in self._loras:
            self._loras.move_to_end(lora_id)
            return self._loras[lora_id]
        from core.lora import load_lora
        bound = load_lora(self.model(), local_file(), name=lora_id)
        if bound.unplaced:
            log.warning("LoRA %s: %d keys not used, e.g. %s", lora_id, len(bound.unplaced), bound.unplaced[:3])
        self._loras[lora_id] = bound
        while len(self._loras) > self.capacity:
            evicted, _ = self._loras.popitem(last=False)
            log.info("LoRA %s evicted from the cache", evicted)
        return bound

    def cached_lora_ids(self) -> list[str]:
        """Held LoRA ids, least recently used first."""
        return list(self._loras)
