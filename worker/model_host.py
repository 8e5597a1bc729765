"""The generation worker's resident state: one base model loaded once, its sampler, and an LRU of LoRAs.

LoRAs are merged into a bf16 base's weights where the GPU has room for a copy of them (core.lora.merge: the base
is kept aside, so taking a LoRA out is an exact copy back; a LoRA then costs nothing per step), else applied
through LoRA slots (core.lora.slots: fixed-capacity buffers beside every targeted linear, +14% per step while a
LoRA is active). Either way a switch writes tensors in place: never a reload of the 8B base nor a
recompilation of the compiled denoise (`O1LORA_LORA_APPLY`). Bound LoRAs are kept by id, least recently used
first out once more than `capacity` are held.

On CUDA the sampler's denoise step is compiled by default (`O1LORA_GENERATE_COMPILE`), and the sizes in
`O1LORA_WARMUP_SIZES` are compiled at worker start (`warm_up`), so no user request pays a compilation.
What is compiled is one decoder layer that all 36 run (compile_scope "layers"): at full size on an H200 it
compiles in 9 s where the whole step took ~164 s (20.7 s vs 4.5 s at 8 layers), at the same speed per step
(bench/RESULTS.md). The compiled code is cached on disk (`compile_cache_dir`, the data dir's compile-cache
by default in the worker), so a restarted worker compiles from that cache (3 s at full size).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

WARMUP_PROMPT = "a photograph of a lighthouse on a rocky coast at dusk"  # any prompt: its length is dynamic
WARMUP_OTHER_PROMPT = "a red circle"  # joined with the one above: prompts of two lengths, as continuous batching


def pick_device() -> tuple[str, "object"]:
    """CUDA in bfloat16 when there is a GPU, else the CPU in float32 (bf16 matmuls are slow on CPUs)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'1024x1024,2048x2048' -> [(1024, 1024), (2048, 2048)] as (width, height); '' -> []."""
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        w, sep, h = part.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) % 32 or int(h) % 32 or not int(w) or not int(h):
            raise ValueError(f"warm-up size {part!r} is not WIDTHxHEIGHT in positive multiples of 32")
        sizes.append((int(w), int(h)))
    return sizes


class ModelHost:
    """Loads the base model on first use (in the worker process, never in a forking parent).

    compile: "auto" (on with CUDA), "on", "off", or a torch.compile backend (tests pass "eager" and
    friends: inductor on a CPU takes minutes). lora_max_rank 0 leaves LoRAs to forward hooks.
    `lock` serialises users of the model (the warm-up thread and the generation task).
    """

    def __init__(
        self,
        model_path: Path,
        lora_capacity: int,
        compile: str = "off",
        lora_max_rank: int = 64,
        cuda_graphs: str = "off",
        cfg_split_pixels: int | None = None,
        compile_scope: str = "layers",
        compile_cache_dir: Path | None = None,
        base_precision: str = "auto",
        offload_blocks: int = 0,
        lora_apply: str = "auto",
        merge_reserve_bytes: int = 0,
    ):
        self.model_path = Path(model_path)
        # a property of the resident base, not of a request: one base serves every request (see worker/README.md)
        self.base_precision, self.offload_blocks = base_precision, offload_blocks
        self.compile_scope = compile_scope  # core.sampler.Sampler's: "layers" or "denoise" (the whole step)
        self.compile_cache_dir = compile_cache_dir
        self.capacity = lora_capacity
        self.compile, self.lora_max_rank, self.cfg_split_pixels = compile, lora_max_rank, cfg_split_pixels
        self.cuda_graphs = cuda_graphs  # "auto" | "on" | "off": core.sampler.Sampler(cuda_graph=...)
        # "auto" | "merge" | "slots"; merge_reserve_bytes: GPU memory "auto" leaves free beside the kept copy
        self.lora_apply, self.merge_reserve_bytes = lora_apply, merge_reserve_bytes
        self.lora_mode = ""  # what the loaded model uses: "merge", "slots" or "hooks"
        self._model = self._tokenizer = self._sampler = None
        self._loras: OrderedDict[str, object] = OrderedDict()
        self._load_lock = threading.Lock()
        self.lock = threading.RLock()
        self._waiting, self._waiting_lock = 0, threading.Lock()  # requests waiting in serving()
        self.loads = 0  # how many times the base was loaded (tests check it stays 1 across LoRA swaps)
        self.warmed: dict[str, float] = {}  # "WxH" -> seconds its warm-up took (compile included)

    def model(self):
        with self._load_lock:
            if self._model is None:
                from core.fp8 import resolve_base_precision
                from core.loading import load_model, load_tokenizer, read_weights
                from core.lora import full_weight_names, install_lora_merging, install_lora_slots

                device, dtype = pick_device()
                precision = resolve_base_precision(self.base_precision, device)
                log.info("loading base model %s on %s (base %s)", self.model_path, device, precision)
                self._tokenizer = load_tokenizer(self.model_path)
                # offloaded layers' weights go to host memory as they are read (core.offload); the LoRA slots
                # installed next stay on the device
                model = load_model(
                    self.model_path,
                    dtype=dtype,
                    device=device,
                    tokenizer=self._tokenizer,
                    base_precision=precision,
                    offload_blocks=self.offload_blocks,
                )
                # the vision tower waits in host memory until a request brings a reference image (1.07 GiB at
                # full size; core.model.HiDreamO1.park_vision): before the LoRA mode is chosen, which sees the room
                if model.park_vision():
                    log.info("vision tower parked in host memory until a reference image needs it")
                self.lora_mode = self._choose_lora_mode(model)
                if self.lora_mode == "merge":
                    # an fp8 base keeps its linears in full precision, read again: merges round from them
                    full = read_weights(self.model_path, full_weight_names(model), dtype, device)
                    n = install_lora_merging(model, full_weights=full)
                    log.info("LoRAs merged into the weights; the base of %d linears kept aside", n)
                elif self.lora_mode == "slots":
                    n = install_lora_slots(model, self.lora_max_rank)
                    log.info("LoRA slots of %d ranks on %d linears", self.lora_max_rank, n)
                self._model = model
                self.loads += 1
            return self._model

    def _choose_lora_mode(self, model) -> str:
        from core.lora import merge_copy_bytes
        from worker.memory_plan import choose_lora_mode, gpu_memory

        on_gpu = model.device.type == "cuda"
        return choose_lora_mode(
            self.lora_apply,
            lora_max_rank=self.lora_max_rank,
            offload_blocks=self.offload_blocks,
            free_bytes=gpu_memory()[0] if on_gpu else None,
            copy_bytes=merge_copy_bytes(model),
            reserve_bytes=self.merge_reserve_bytes,
        )

    @contextlib.contextmanager
    def serving(self):
        """The host's lock, for a request: it goes before any warm-up call still to come (warm_up waits while a
        request waits; a plain lock would let the warm-up thread take it back at once, call after call)."""
        with self._waiting_lock:
            self._waiting += 1
        try:
            self.lock.acquire()
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        try:
            yield
        finally:
            self.lock.release()

    def release(self) -> bool:
        """Drop the base and the bound LoRAs (a training needs the GPU); the next model() loads it again.
        True when a model was held. The caller frees the GPU memory (gc + torch.cuda.empty_cache)."""
        with self.lock, self._load_lock:  # after any warm-up or generation using the model
            held = self._model is not None
            self._model = self._tokenizer = self._sampler = None
            self._loras.clear()
            self.warmed.clear()
        return held

    @property
    def tokenizer(self):
        self.model()
        return self._tokenizer

    def compile_backend(self):
        """What the sampler compiles with: None (eager), "inductor", or the backend given."""
        if self.compile == "off":
            return None
        if self.compile == "auto":
            return "inductor" if pick_device()[0] == "cuda" else None
        return "inductor" if self.compile == "on" else self.compile

    def cuda_graphs_on(self, backend) -> bool:
        """Whether each request's denoise step is captured once and replayed as a CUDA graph: "auto" with CUDA when
        the step is compiled (the compiled fp8 step is light enough on the GPU that launching its ~1,500 kernels
        from Python could not keep up: 59 against 42 ms a step on an H200, the same kernels; with a graph 42 ms
        every time). Never on a CPU."""
        if self.cuda_graphs == "off" or pick_device()[0] != "cuda":
            return False
        return self.cuda_graphs == "on" or backend is not None

    @property
    def sampler(self):
        """One sampler for the process: its compiled denoise (and dynamo's cache) outlive each request."""
        if self._sampler is None:
            from core.sampler import Sampler

            backend = self.compile_backend()
            if backend == "inductor" and self.compile_cache_dir is not None:
                use_compile_cache(self.compile_cache_dir)
            self._sampler = Sampler(
                self.model(),
                self.tokenizer,
                preview_every=0,
                compile=backend or False,
                cfg_split_pixels=self.cfg_split_pixels,
                compile_scope=self.compile_scope,
                cuda_graph=self.cuda_graphs_on(backend),
            )
        return self._sampler

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

    def warm_up(self, sizes: list[tuple[int, int]], steps: int = 2) -> dict[str, float]:
        """Run a short sampling at each size so that every graph a request of that size needs is compiled
        now. CFG batched, a batch is one of three kinds, each its own graph (core.model.PrefixCache.grouped):
        one image (the prompt's row and the negative's, each over its own unpadded prompt), several images of
        one prompt (runs of n rows), and requests of several prompts joined by continuous batching (padded,
        masked); so the warm-up samples one image, two images, and two prompts. CFG as two calls: the same
        calls compile its one-row and several-row graphs. All with the LoRA slots off (plain requests) and on
        (any LoRA set); merged LoRAs need no second variant. Returns seconds per size; the model is loaded first
        (its time is not counted)."""
        from core.lora import slots_forced_on
        from core.sampler import ImageSpec

        self.model()
        one = ImageSpec(WARMUP_PROMPT, " ", 0)
        for w, h in sizes:
            t = time.perf_counter()
            for force in (False, True) if self.lora_mode == "slots" else (False,):
                for batch in ([one], [one, one], [one, ImageSpec(WARMUP_OTHER_PROMPT, " ", 0)]):
                    # the lock is taken per call: a request that arrives meanwhile waits for one warm-up call
                    # (one graph's compile), not for all of them (on an H200 the second request of a cold worker
                    # waited 15 s for the whole warm-up)
                    while self._waiting:  # requests first
                        time.sleep(0.005)
                    with self.lock:
                        if self._model is None:  # released meanwhile (a training has the GPU): stop here
                            log.info("warm-up stopped: the model was released")
                            return dict(self.warmed)
                        with slots_forced_on(self._model) if force else contextlib.nullcontext():
                            self.sampler.sample(batch, width=w, height=h, steps=steps, return_latents=True)
                            _sync(self._model)
            self.warmed[f"{w}x{h}"] = time.perf_counter() - t
            log.info("warm-up %dx%d: %.1f s (compiled: %s)", w, h, self.warmed[f"{w}x{h}"], self.sampler.compiled)
        return dict(self.warmed)


def use_compile_cache(path: Path) -> None:
    """Keep inductor's compiled kernels and graphs (and Triton's, inside it) under `path`, so that a restarted
    worker compiles from disk; unless TORCHINDUCTOR_CACHE_DIR was set by whoever started the process."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        Path(path).mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(path).resolve())


def _sync(model) -> None:
    import torch

    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
