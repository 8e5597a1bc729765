"""The training loop: setup, steps, checkpoints, previews and the export of a LoRA (or of a whole small model).

From Python (the training worker does this; `python -m core.train` is core.train.cli):

    result = train(TrainConfig(model_path=..., data_dir=..., out_dir=..., trigger="sks style"),
                   TrainCallbacks(on_step=..., on_preview=..., on_checkpoint=..., should_stop=...))

Writes out_dir/checkpoints/step-N/ (see core.train.checkpoint), previews/step-N-k.png (adapter on | off),
and at the end lora/ (PEFT folder) + lora.safetensors (ComfyUI) -- or model/ (an HF folder) with full=True.

Shape: Trainer.__init__ is the setup, run() the loop, save_checkpoint() / load_checkpoint() the state.
Every random draw of a step (sigma, eps) comes from one generator whose state is checkpointed with the
optimizer, the LR schedule and the data position, so an interrupted and resumed run equals an
uninterrupted one (exactly, on the CPU in float32).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from core.fp8 import resolve_base_precision
from core.lora import (
    LoraSpec,
    adapter_state_dict,
    build_metadata,
    inject_lora,
    load_adapter_state_dict,
    lora_parameters,
    save_comfyui_file,
    save_peft_folder,
    set_adapter_enabled,
)
from core.objective import Objective
from core.train import distributed
from core.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
    step_dir_name,
)
from core.train.config import TrainConfig
from core.train.hooks import TrainCallbacks, TrainResult
from core.train.validation_history import ValidationHistory
from core.train.vision_cache import VisionCache

log = logging.getLogger(__name__)

LOSS_EMA_BETA = 0.9  # smoothing of the reported loss (kept in checkpoints as the uncorrected EMA and its count)

# Settings a resumed run must share with the checkpoint, or the continuation is not the same training.
_RESUME_MUST_MATCH = (
    "rank",
    "alpha",
    "extra_targets",
    "full",
    "batch_size",
    "grad_accum",
    "seed",
    "resolution",
    "lr",
    "lr_schedule",
    "warmup_steps",
    "sigma_dist",
    "weighting",
    "repeats",
    "trigger",
    "reference_dropout",
)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr for optimizer step `step` (0-based): linear warm-up, then constant or cosine."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    def __init__(
        self, cfg: TrainConfig, callbacks: TrainCallbacks | None = None, data=None, model=None, tokenizer=None
    ):
        """Setup: device and precision, model (+ LoRA), optimizer, schedule, objective, data, resume."""
        cfg.validate()
        if data is None and not cfg.data_dir:
            raise ValueError("no training data: set data_dir (or pass data= for a generated stream)")
        self.out = Path(cfg.out_dir)
        self.device = torch.device(
            "cuda"
            if cfg.device == "auto" and torch.cuda.is_available()
            else ("cpu" if cfg.device == "auto" else cfg.device)
        )
        on_cuda = self.device.type == "cuda"
        self.dist = distributed.setup(self.device.type)  # torchrun: one process per GPU
        if self.dist.active and on_cuda:
            self.device = torch.device("cuda", self.dist.local_rank)
        # Callbacks (progress, previews, the job row) belong to rank 0 alone.
        self.cfg, self.cb = cfg, (callbacks or TrainCallbacks()) if self.dist.main else TrainCallbacks()
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and on_cuda)
        # LoRA: the frozen base lives in bf16 (no per-step weight casts); full: float32 master weights.
        base_dtype = torch.bfloat16 if (self.bf16 and not cfg.full) else torch.float32

        # the frozen base's linears in float8 or not (core/fp8.py); a full run trains them, so never fp8
        self.base_precision = "bf16" if cfg.full else resolve_base_precision(cfg.base_precision, self.device)

        torch.manual_seed(cfg.seed)  # LoRA A init (PEFT draws it from the global generator)
        if model is None:
            from core.loading import load_model, load_tokenizer

            # fp8: each linear is quantised as it is read (the bf16 model never exists on the GPU); offloaded
            # layers' weights go to host memory as they are read
            model = load_model(
                cfg.model_path,
                dtype=base_dtype,
                device=self.device,
                base_precision=self.base_precision,
                offload_blocks=cfg.offload_blocks,
            )
            tokenizer = tokenizer or load_tokenizer(cfg.model_path)
        elif tokenizer is None:
            raise ValueError("pass the tokenizer together with a prebuilt model")
        else:
            model = _prebuilt(model, self.base_precision, cfg.offload_blocks, self.device)
        self.model, self.tokenizer = model, tokenizer
        # the base model's own images of the captions without the trigger, drawn before the LoRA exists
        self.prior_dir = self._prior_images(data)
        if cfg.full:
            # The vision tower only serves reference images; text-to-image training never reaches it.
            for name, p in self.model.named_parameters():
                p.requires_grad_(not name.startswith("model.visual."))
            self.params = [p for p in self.model.parameters() if p.requires_grad]
            self.spec = None
        else:
            self.spec = LoraSpec(
                rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.lora_dropout, extra_targets=tuple(cfg.extra_targets)
            )
            inject_lora(self.model, self.spec)
            self.params = lora_parameters(self.model)
            if self.bf16:
                # PEFT casts each LoRA input to the adapter's float32 and autocast casts it straight back
                # to bf16: two activation-sized copies per linear for nothing. Autocast alone suffices.
                _set_peft_input_casting(self.model, False)
        self.checkpointing = self._want_checkpointing()
        if self.checkpointing:
            self.model.gradient_checkpointing_enable()
        # Compiled layers are what bench_training.py's "ours" measures; eager costs ~1.5x per step on an H200.
        self.compiled = cfg.compile is True or (cfg.compile == "auto" and on_cuda)
        # layouts are built here on the CPU: the model's value checks would block on the GPU every step
        self.model.validate_inputs = not on_cuda
        self.model.train()
        self.forward = self.model  # what loss() calls; benchmarks swap in the dense-mask path

        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=on_cuda
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, cfg))
        self.objective = Objective(sigma_dist=cfg.sigma_dist, shift=cfg.sigma_shift, weighting=cfg.weighting)
        # rank 0 draws exactly what a single-process run draws; other ranks get streams of their own
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed + 1_000_003 * self.dist.rank)
        data = self._data(data, on_cuda)
        self.data = data
        self._vision_to_host(on_cuda)
        self.cuda_graphs = self._want_cuda_graphs(on_cuda)
        if self.compiled:
            self.model.compile_layers(mode="reduce-overhead" if self.cuda_graphs else None)
        # an edit dataset: the frozen vision tower's features per sample (and flip), computed once (vision_cache)
        frozen = self._with_references and not any(p.requires_grad for p in self.model.model.visual.parameters())
        self.vision_cache = VisionCache(self.device) if frozen else None
        self.grad_sync = self._grad_sync()
        if self.grad_sync == "overlap":
            self.forward = distributed.wrap_ddp(
                self.model,
                self.params,
                self.dist,
                self.device,
                static_graph=distributed.static_graph_ok(cfg.grad_accum, not self._with_references),
            )
        self._layouts: dict[tuple, tuple[dict, int]] = {}
        self.step = 0
        self._ema = (0.0, 0)  # (uncorrected EMA of logged losses, count); see smoothed
        self._ckpt_step = -1  # step of the newest checkpoint written or loaded
        self.last_checkpoint: Path | None = None
        self.previews: list[Path] = []
        # Validation: the losses so far, and a host copy of the weights of the best one (None before the first).
        # Every rank holds the history (rank 0's): the early-stop decision is taken by all of them.
        self.history = ValidationHistory(patience=cfg.early_stop_patience)
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.early_stopped = False

        ckpt = self._resume_path()
        if ckpt is not None:
            self.load_checkpoint(ckpt)

    def _prior_images(self, data) -> Path | None:
        """core.train.prior's folder for this run (None: none is used); rank 0 draws, the others wait for it."""
        if data is not None or not self.cfg.prior_preservation:
            return None
        from core.data import TrainDataset
        from core.train.prior import prior_images

        scanned = TrainDataset(self.cfg.data_dir, resolution=self.cfg.resolution, min_side=self._min_side())
        folder = prior_images(
            self.cfg,
            self.model,
            self.tokenizer,
            scanned,
            on_main=self.dist.main,
            progress=self.cb.on_prepare,
            should_stop=self.cb.should_stop,
        )
        if folder is not None and self.dist.active:
            torch.distributed.barrier()
        return folder

    def _min_side(self) -> int:
        return min(self.cfg.min_side, self.cfg.resolution)

    def _source(self):
        """The dataset, with the prior images laid over it when there are any."""
        if self.prior_dir is None:
            return self.cfg.data_dir
        from core.data.sources import FolderSource, LayeredSource, open_source

        return LayeredSource(open_source(self.cfg.data_dir), FolderSource(self.prior_dir))

    def _data(self, data, on_cuda: bool):
        """The training batches, and self.validator: the validation images held out of data_dir (or those of
        validation_dir) with their fixed noise; None when the run validates nothing."""
        from core.train.validation import FixedNoiseValidation, validation_set

        cfg, train_ds = self.cfg, None
        if data is None:
            from core.data import TrainDataset

            train_ds = TrainDataset(
                self._source(),
                resolution=cfg.resolution,
                trigger=cfg.trigger,
                repeats=cfg.repeats,
                flip=cfg.flip,
                caption_dropout=cfg.caption_dropout,
                seed=cfg.seed,
                cache=True,
                min_side=self._min_side(),
                reference_dropout=cfg.reference_dropout,
            )
        train_ds, val_ds = validation_set(cfg, train_ds)
        self.validator = None
        if val_ds is not None:
            self.validator = FixedNoiseValidation(
                val_ds,
                self.objective,
                n_sigmas=cfg.validation_sigmas,
                n_seeds=cfg.validation_seeds,
                device=self.device,
                # With checkpointing on a GPU a validation call holds at most twice the training batch's rows:
                # a no-grad forward keeps ~0.15 MiB per token and row against ~0.46 for a checkpointed training
                # sample (full size), so validating does not raise the run's peak. 8 rows at 1024^2 took an fp8
                # run from 9.0 to 10.2 GiB (bench/RESULTS.md, issue 15); the smaller calls doubled validation's
                # time (5.4 -> 11.3 s a run), so without checkpointing (5.1 MiB per token) they stay large.
                **(
                    {"tokens_per_call": 2 * cfg.batch_size * (cfg.resolution // 32) ** 2}
                    if on_cuda and self.checkpointing
                    else {}
                ),
            )
        if data is None:
            from core.train.data import FolderData

            return FolderData(
                cfg.data_dir,
                resolution=cfg.resolution,
                batch_size=cfg.batch_size,
                trigger=cfg.trigger,
                repeats=cfg.repeats,
                flip=cfg.flip,
                caption_dropout=cfg.caption_dropout,
                seed=cfg.seed,
                num_workers=cfg.num_workers,
                min_side=min(cfg.min_side, cfg.resolution),
                pin_memory=on_cuda,
                rank=self.dist.rank,
                world_size=self.dist.world,
                dataset=train_ds,
            )
        if self.dist.active:
            data.shard(self.dist.rank, self.dist.world)
        return data

    def _vision_to_host(self, on_cuda: bool) -> None:
        """Text-to-image training never runs the vision tower (it reads reference images only), so on a GPU its
        weights go to host memory for the run: 1.07 GiB of a full-size model in bf16, which takes an fp8 1024^2
        training from 10.0 to about 9 GiB (bench/RESULTS.md), under a 12 GB card's budget. An edit dataset keeps it
        on the device, and so does a run of several processes (DDP wraps a module on one device). The prior
        images are drawn before this (text-to-image too), so loading's peak is unchanged."""
        if on_cuda and not self._with_references and not self.dist.active:
            self.model.park_vision()  # model.vision_parked says so afterwards

    def _want_cuda_graphs(self, on_cuda: bool) -> bool:
        """Whether the compiled decoder layer replays CUDA graphs (torch.compile's "reduce-overhead": inductor's
        cudagraph trees). A full-size step launches ~5,400 kernels; compiled without graphs the GPU was busy 75 of
        a 186 ms step (fp8, 1024^2, H200) and the step ran 0.163 s, with graphs 0.076 s (0.085 s with
        checkpointing: bench/RESULTS.md). "auto": on for a compiled CUDA run in one process on text-to-image data
        with every layer resident and one micro-batch per step, as measured; several processes (DDP's gradient
        hooks), offloaded layers (their weights stream into shared slots), reference images (one forward per
        sample, each of its own shape) and gradient accumulation keep the plain compiled layer: not measured with
        graphs."""
        cfg = self.cfg
        if not self.compiled or cfg.cuda_graphs is False:
            return False
        if cfg.cuda_graphs is True:
            return True
        if not on_cuda or self.dist.active or cfg.offload_blocks or cfg.grad_accum > 1:
            return False
        return not self._with_references

    @property
    def _with_references(self) -> bool:
        return bool(getattr(getattr(self.data, "dataset", None), "has_references", False))

    def _grad_sync(self) -> str | None:
        """How several ranks average gradients (core.train.distributed): "overlap", "after", or None alone."""
        if not self.dist.active:
            return None
        # each sample with references is its own forward; DDP's hooks allow one forward per backward
        many_forwards = self._with_references and self.cfg.batch_size > 1
        if self.cfg.grad_sync == "overlap" and many_forwards:
            raise ValueError(
                "grad_sync 'overlap' (DDP) needs one forward per backward, and samples with reference images "
                "run one each: use batch_size 1 (grad_accum for a larger batch) or grad_sync 'after' / 'auto'"
            )
        if self.cfg.grad_sync == "auto":
            return "after" if many_forwards else "overlap"
        return self.cfg.grad_sync

    def _want_checkpointing(self) -> bool:
        choice = self.cfg.gradient_checkpointing
        if choice != "auto":
            return bool(choice)
        if self.cfg.offload_blocks:
            return True  # core.offload needs it (validate() refuses offload with checkpointing off)
        if self.device.type != "cuda":
            return False  # CPU runs are small models; host memory is not the limit there
        free, _ = torch.cuda.mem_get_info(self.device)
        # optimizer state (2 fp32 moments) + fp32 grads of the trained parameters are still to come
        free -= sum(p.numel() for p in self.params) * 12
        tokens = _max_tokens(self.cfg.resolution)
        need = activation_bytes(
            self.model.config.text_config, self.cfg.batch_size, tokens, self.cfg.rank if not self.cfg.full else 0
        )
        return need > 0.8 * free

    # ------------------------------------------------------------------------------------- state
    def _resume_path(self) -> Path | None:
        r = self.cfg.resume
        if not r:
            return None
        if r == "latest":
            return latest_checkpoint(self.out / "checkpoints")
        return Path(r)

    def _weights(self) -> dict[str, torch.Tensor]:
        if self.cfg.full:
            return dict(self.model.state_dict())
        return adapter_state_dict(self.model)

    def save_checkpoint(self) -> Path:
        """Every rank calls this (its RNG state is gathered); rank 0 writes."""
        rngs = distributed.gather_objects(rng_states(self.generator), self.dist)
        path = self.out / "checkpoints" / step_dir_name(self.step)
        if self.dist.main:
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rngs,  # one entry per rank
                "data": self.data.state_after(self.step * self.cfg.grad_accum),
                "ema": self._ema,
                "world_size": self.dist.world,
                "config": self.cfg.to_dict(),
                "validation": self.history.to_dict(),
            }
            point = next((p for p in self.history.points if p["step"] == self.step), None)
            meta = {
                "o1lora.step": str(self.step),
                "o1lora.validation_loss": str(point["loss"]) if point else "",
                "o1lora.validation": json.dumps(self.validation_summary()) if self._validating else "",
            }
            # the best adapter rides along while it is not this one: a resume (on another machine) keeps it
            best = self.history.best
            extra = (
                {"best.safetensors": self.best_weights}
                if self.best_weights is not None and best and best["step"] != self.step
                else {}
            )
            path = save_checkpoint(
                self.out / "checkpoints",
                self.step,
                self._weights(),
                state,
                keep=self.cfg.keep_checkpoints,
                metadata=meta,
                extra=extra,
            )
        distributed.barrier(self.dist)
        self.last_checkpoint, self._ckpt_step = path, self.step
        if self.cb.on_checkpoint:
            self.cb.on_checkpoint(self.step, path)
        return path

    def load_checkpoint(self, path: Path) -> None:
        weights, state = load_checkpoint(path, device=self.device)
        old = state.get("config", {})
        changed = [k for k in _RESUME_MUST_MATCH if k in old and _norm(old[k]) != _norm(getattr(self.cfg, k))]
        if changed:
            raise ValueError(
                f"cannot resume from {path}: settings changed since it was written: "
                + ", ".join(f"{k} {old[k]!r} -> {getattr(self.cfg, k)!r}" for k in changed)
            )
        world = state.get("world_size", 1)
        if world != self.dist.world and self.dist.main:
            # The data order continues where the ranks were (the sampler re-deals the rest of the epoch), ranks
            # that existed keep their noise streams, new ones start their own; a step now trains
            # batch_size x grad_accum x this many ranks images.
            log.warning(
                "resuming %s, written by %d process(es), on %d: the data position is kept; images per step "
                "change from %d to %d",
                path,
                world,
                self.dist.world,
                world * self.cfg.batch_size * self.cfg.grad_accum,
                self.dist.world * self.cfg.batch_size * self.cfg.grad_accum,
            )
        if self.cfg.full:
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
        else:
            load_adapter_state_dict(self.model, weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.dist.rank < len(state["rng"]):
            set_rng_states(self.generator, state["rng"][self.dist.rank])
        # For a data source that re-deals on another number of ranks (FolderData): how many wrote it, and the
        # batches each had used (older checkpoints lack both in their data state).
        batches = int(state["step"]) * self.cfg.grad_accum
        self.data.load_state_dict({"world_size": world, "batches": batches, **state["data"]})
        self.step = int(state["step"])
        self._ema = tuple(state["ema"])
        self.history = ValidationHistory.from_dict(state.get("validation"), patience=self.cfg.early_stop_patience)
        best, best_file = self.history.best, Path(path) / "best.safetensors"
        if best_file.is_file():
            self.best_weights = load_file(str(best_file))
        elif best is not None and best["step"] == self.step:
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
        self.last_checkpoint, self._ckpt_step = Path(path), self.step

    # ------------------------------------------------------------------------------------- one step
    def _inputs(self, captions: list[str], height: int, width: int) -> tuple[dict, int]:
        """Model inputs of a caption batch (all but vinputs / timestep), on the device, cached.

        Built on the CPU and moved once: a blocking host-to-device copy or a `bool()` of a device tensor
        would stall the GPU every step. Text-to-image layouts put the N image tokens last, so the loss
        reads x_pred[:, -N:] instead of a boolean-mask gather (which would sync too).
        """
        from core.layout import build_t2i, collate

        key = (tuple(captions), height, width)
        hit = self._layouts.get(key)
        if hit is not None:
            return hit
        batch = collate([build_t2i(self.tokenizer, c, height, width) for c in captions])
        n = batch.n_image
        tail_only = bool(batch.vinput_mask[:, -n:].all()) and int(batch.vinput_mask.sum()) == n * len(captions)
        if batch.n_ref or not tail_only:
            raise ValueError("training expects text-to-image layouts with the image tokens last")
        inputs = dict(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            token_types=batch.token_types,
            text_lengths=batch.text_lengths if batch.padded else None,
        )
        # through pinned memory: a copy from pageable memory waits for the GPU (a host sync per new caption)
        pin = self.device.type == "cuda"
        inputs = {
            k: ((v.pin_memory() if pin else v).to(self.device, non_blocking=True) if v is not None else None)
            for k, v in inputs.items()
        }
        if len(self._layouts) >= 4096:  # generated captions rarely repeat: keep the cache bounded
            self._layouts.clear()
        self._layouts[key] = (inputs, n)
        return inputs, n

    def loss(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """The recipe's loss for one micro-batch (float32 scalar, on the device)."""
        from core.layout import patchify

        images = images.to(self.device, non_blocking=True)
        h, w = images.shape[-2:]
        x0 = patchify(images.float())
        inputs, n = self._inputs(captions, h, w)
        z, t, sigma = self.objective.noise(x0, self.generator)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            x_pred = self.forward(vinputs=z, timestep=t, **inputs).x_pred
        return self.objective.loss(x_pred[:, -n:], x0, sigma)

    def loss_with_references(
        self, images: torch.Tensor, captions: list[str], references: list[list], keys: list | None = None
    ) -> torch.Tensor:
        """The recipe's loss for a micro-batch of edit / personalisation samples: each sample laid out as the
        sampler lays out a request with its references (core.train.references), the loss on its target tokens
        only. Samples run one forward each (their reference counts and shapes differ), the mean is the
        batch's; a sample whose references were dropped out trains as text-to-image. keys: each sample's
        (name, flipped) from the dataset; with them the vision tower runs once per key (self.vision_cache)."""
        from core.layout import patchify
        from core.train.references import edit_inputs, frozen_vision, reference_layout, target_slice

        images = images.to(self.device, non_blocking=True)
        h, w = images.shape[-2:]
        total = torch.zeros((), device=self.device)
        keys = keys or [None] * len(captions)
        for image, caption, refs, key in zip(images, captions, references, keys):
            x0 = patchify(image[None].float())
            batch = reference_layout(self.tokenizer, caption, refs, h, w).to(self.device)
            z, t, sigma = self.objective.noise(x0, self.generator)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                if key is None or not refs or self.vision_cache is None:
                    vision = frozen_vision(self.model, batch)
                else:
                    vision = self.vision_cache.get((*key, h, w), lambda: frozen_vision(self.model, batch))
                x_pred = self.forward(**edit_inputs(batch, z, t, vision)).x_pred
            total = total + self.objective.loss(x_pred[:, target_slice(batch)], x0, sigma)
        return total / len(captions)

    def train_step(self, batches) -> torch.Tensor:
        """One optimizer step over grad_accum micro-batches from `batches`; returns the loss, not synced."""
        cfg = self.cfg
        if self.cuda_graphs:  # a new iteration: the graphs may reuse the memory of the last step's outputs
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for i in range(cfg.grad_accum):
            # edit datasets add [references per sample] and [their keys: (name, flipped) or None]
            images, captions, *refs = next(batches)
            # DDP all-reduces gradients in backward; only the last micro-batch of a step needs to
            sync = contextlib.nullcontext()
            if self.grad_sync == "overlap" and i < cfg.grad_accum - 1:
                sync = self.forward.no_sync()
            with sync:
                if refs and any(refs[0]):
                    keys = refs[1] if len(refs) > 1 else None
                    loss = self.loss_with_references(images, captions, refs[0], keys) / cfg.grad_accum
                else:
                    loss = self.loss(images, captions) / cfg.grad_accum
                loss.backward()
            total += loss.detach()
        if self.grad_sync == "after":
            distributed.average_gradients(self.params, self.dist)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm, foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return total

    # ------------------------------------------------------------------------------------- the loop
    def run(self) -> TrainResult:
        cfg = self.cfg
        from core.train.data import Prefetch

        # Decoding the next images on a thread while the GPU trains: inline, a 1024-px PNG costs tens of ms
        # of a ~0.15 s step (DataLoader workers, num_workers > 0, do the same from other processes).
        batches = Prefetch(iter(self.data), cfg.prefetch) if cfg.prefetch else iter(self.data)
        try:
            return self._loop(batches)
        finally:
            if isinstance(batches, Prefetch):
                batches.close()

    def _loop(self, batches) -> TrainResult:
        cfg, cb = self.cfg, self.cb
        from core.train.readout import StepReports

        # Logged values reach the host one step late (core.train.readout): no step waits for the GPU.
        reports = StepReports(self.device)
        self._stop_agreed, self._last_loss = False, None
        stopped = False
        window_loss = torch.zeros((), device=self.device)
        window_steps, t_window = 0, time.perf_counter()
        if self._validating and self.history.baseline is None:
            self._validate(baseline=True)
        self.early_stopped = self._validating and self.history.should_stop  # a resumed run that had stopped
        while self.step < cfg.steps and not self.early_stopped:
            # One process asks every step (no GPU involved). Several ranks agree through the logged steps'
            # collective (logged_values): rank 0 asks at each logged step, and every rank reads the answer one
            # step later, so a stop lands at most log_every steps after it was asked for.
            if self._stop_agreed or (not self.dist.active and cb.should_stop and cb.should_stop()):
                stopped = True
                break
            window_loss += self.train_step(batches)
            window_steps += 1
            self._deliver(reports.take(before_step=self.step))  # the previous logged step: done by now
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                ask = self.dist.active and bool(cb.should_stop and cb.should_stop())
                values = distributed.logged_values(window_loss / window_steps, ask, self.dist)
                sec = (time.perf_counter() - t_window) / window_steps  # the host runs at the GPU's pace
                reports.push(self.step, values, lr=self.scheduler.get_last_lr()[0], sec=sec)
                window_loss = torch.zeros((), device=self.device)
                window_steps, t_window = 0, time.perf_counter()
            t_side = time.perf_counter()
            validate = self._validating and (self.step % cfg.validation_every == 0 or self.step == cfg.steps)
            checkpoint = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
            preview = cfg.sample_every and cfg.sample_prompts and self.step % cfg.sample_every == 0
            if validate or checkpoint or preview:
                # these wait for the GPU anyway; callers see a step's on_step before its checkpoint
                self._deliver(reports.take())
            # validation before the checkpoint, so that the checkpoint holds this step's loss
            if validate:
                self._validate()
                self.early_stopped = distributed.broadcast_flag(self.history.should_stop, self.dist, self.device)
                if self.early_stopped:
                    break
            if checkpoint:
                self.save_checkpoint()
            if preview:
                if self.dist.main:
                    self._preview()
                distributed.barrier(self.dist)
            t_window += time.perf_counter() - t_side  # seconds/step measures training, not previews
        self._deliver(reports.take())
        if self._ckpt_step != self.step:
            self.save_checkpoint()  # a stop, or a run whose end is not on the checkpoint grid
        result = TrainResult(
            self.step,
            stopped,
            self._last_loss,
            self.smoothed,
            self.last_checkpoint,
            previews=list(self.previews),
            early_stopped=self.early_stopped,
            validation=self.validation_summary() if self._validating else None,
        )
        if not stopped and self.dist.main:
            self._export(result)
        distributed.barrier(self.dist)
        return result

    def _deliver(self, reports: list) -> None:
        """Logged steps' values, now on the host: the smoothed loss, on_step, and the ranks' stop agreement."""
        for step, (loss, stop), extra in reports:
            self._last_loss = loss
            self._smooth(loss)
            self._stop_agreed = self._stop_agreed or (self.dist.active and stop > 0)
            if self.cb.on_step:
                sec = extra["sec"]
                self.cb.on_step(
                    step, self.cfg.steps, loss, self.smoothed, extra["lr"], sec, sec * (self.cfg.steps - step)
                )

    @property
    def _validating(self) -> bool:
        return self.validator is not None

    def _validate(self, baseline: bool = False) -> None:
        """One fixed-noise evaluation on rank 0 (the others wait): the adapter as it is, or, for the baseline,
        switched off (full mode: the weights before the first step). Records it and keeps the best adapter."""
        if self.dist.main:
            off = baseline and not self.cfg.full
            if off:
                set_adapter_enabled(self.model, False)
            try:
                with self._side_calls():
                    point = self.validator.evaluate(
                        self.model, self._inputs, bf16=self.bf16, tokenizer=self.tokenizer
                    )
            finally:
                if off:
                    set_adapter_enabled(self.model, True)
            point["step"] = self.step
            if baseline:
                self.history.baseline = point
            elif self.history.add(point):
                # a host copy: the weights move on with the next step (an adapter is small; a full model
                # trained with validation pays its size once per new best)
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self._weights().items()}
            if self.cb.on_validation:
                self.cb.on_validation(self.step, point["loss"], baseline, self.validation_summary())
        if not baseline:
            self._share_history()
        distributed.barrier(self.dist)

    def validation_summary(self) -> dict:
        """The history's summary and the size of the validation set (what reports and metadata carry)."""
        return {**self.history.summary(), "images": len(self.validator.items) if self.validator else 0}

    def _share_history(self) -> None:
        """Every rank holds rank 0's history (checkpoints are written by rank 0, but the stop is collective)."""
        if self.dist.active:
            self.history = ValidationHistory.from_dict(
                distributed.gather_objects(self.history.to_dict(), self.dist)[0],
                patience=self.cfg.early_stop_patience,
            )

    def _smooth(self, loss: float) -> None:
        raw, n = self._ema
        self._ema = (LOSS_EMA_BETA * raw + (1 - LOSS_EMA_BETA) * loss, n + 1)

    @property
    def smoothed(self) -> float | None:
        """Bias-corrected EMA of the logged losses (what progress bars and the API show); None before any."""
        raw, n = self._ema
        return raw / (1 - LOSS_EMA_BETA**n) if n else None

    def _side_calls(self):
        """Validation and previews: the layers uncompiled when the training step replays CUDA graphs, so that the
        graphs serve the training shapes alone (a preview's denoise has shapes of its own); the same compiled
        function comes back after, nothing recompiles."""
        return self.model.layers_eager() if self.cuda_graphs else contextlib.nullcontext()

    def _preview(self) -> None:
        from core.train.preview import render_previews

        side = self.cfg.sample_size or self.cfg.resolution
        with self._side_calls(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            paths = render_previews(
                self.model,
                self.tokenizer,
                list(self.cfg.sample_prompts),
                step=self.step,
                out_dir=self.out / "previews",
                width=side,
                height=side,
                steps=self.cfg.sample_steps,
                guidance=self.cfg.sample_guidance,
                seed=self.cfg.sample_seed,
                preset=self.cfg.sample_preset,
                lora=not self.cfg.full,
                references=self._preview_references(),
            )
        self.previews.extend(paths)
        if self.cb.on_preview:
            self.cb.on_preview(self.step, paths)

    def _preview_references(self) -> list | None:
        """An edit dataset previews every prompt with the references of its first sample that has some (the
        same images each time, so previews compare across steps); None for text-to-image data."""
        dataset = getattr(self.data, "dataset", None)
        if dataset is None or not getattr(dataset, "has_references", False):
            return None
        if not hasattr(self, "_preview_refs"):
            from core.data.images import load_rgb

            rec = next(r for r in dataset.records if r.references)
            self._preview_refs = [load_rgb(dataset.source.read(n), dataset.max_pixels) for n in rec.references]
        return self._preview_refs

    def _export(self, result: TrainResult) -> None:
        cfg = self.cfg
        if cfg.full:
            from core.tiny import save_checkpoint as save_hf_folder

            result.model_dir = save_hf_folder(self.model, self.out / "model", self.tokenizer)
            return
        last = ("last", self.step, adapter_state_dict(self.model))
        best = self.history.best
        kept = None  # the best step's weights, when they are not the last step's
        if best is not None and best["step"] != self.step and self.best_weights is not None:
            kept = ("best", best["step"], self.best_weights)
        published, other = (kept, last) if (cfg.publish == "best" and kept) else (last, kept)
        # published: lora/ + lora.safetensors; the other choice (when they differ): lora-<which>/ + .safetensors
        for choice, stem in ((published, "lora"), (other, f"lora-{other[0]}" if other else None)):
            if choice is None:
                continue
            which, step, adapter = choice
            meta = build_metadata(
                trigger=cfg.trigger,
                spec=self.spec,
                steps=step,
                resolution=cfg.resolution,
                base_model=cfg.base_model_name or Path(cfg.model_path).name,
                base_config=self.model.config,
                training={**_training_settings(cfg), "base_precision": self.base_precision},
            )
            if self._validating:
                point = next((p for p in self.history.points if p["step"] == step), None)
                meta["o1lora.checkpoint"] = "best" if best and best["step"] == step else which
                meta["o1lora.validation_loss"] = str(point["loss"]) if point else ""
                meta["o1lora.validation"] = json.dumps(self.validation_summary())
            folder = save_peft_folder(
                adapter, self.spec, self.out / stem, meta, base_model=cfg.base_model_name or str(cfg.model_path)
            )
            file = save_comfyui_file(adapter, self.spec, self.out / f"{stem}.safetensors", meta)
            if stem == "lora":
                result.lora_dir, result.lora_file, result.published_step = folder, file, step
            else:
                result.other_lora = (which, step, folder, file)


def _max_tokens(resolution: int, caption_tokens: int = 320) -> int:
    """Sequence length to plan memory for: the widest bucket's patches (area ~ resolution^2, at most a few
    percent over) plus a long prose caption in the chat template."""
    return int((resolution // 32) ** 2 * 1.06) + caption_tokens


def activation_bytes(text_config, batch: int, tokens: int, rank: int = 16) -> int:
    """Estimated autograd memory of the decoder layers without checkpointing (bf16 activations).

    Per token and layer a Qwen3 decoder layer keeps ~12 hidden-sized tensors (norm outputs, q/k/v before
    and after their norms and rotary, attention output, residuals), 4 MLP-sized ones (gate, up, act(gate),
    product) and two float32 hidden-sized norm intermediates; LoRA adds 7 rank-sized ones. A 1.5 margin
    covers the allocator and transient buffers. Full size, 1024 px, batch 1: ~16 GiB; 2048 px: ~54 GiB.
    """
    h, m = text_config.hidden_size, text_config.intermediate_size
    per_token = 2 * (12 * h + 4 * m + 7 * rank) + 4 * 2 * h
    return int(1.5 * per_token * tokens * batch * text_config.num_hidden_layers)


def _prebuilt(model, base_precision: str, offload_blocks: int, device: torch.device):
    """A model passed in (benchmarks, tests) brought to the run's base precision and offload, on the device."""
    from core.fp8 import base_precision_of, convert_to_fp8
    from core.offload import BlockOffload, block_offload

    model = model.to(device)
    have = base_precision_of(model)
    if base_precision == "fp8" and have != "fp8":
        convert_to_fp8(model)
    elif base_precision == "bf16" and have == "fp8":
        raise ValueError("the model passed in has an fp8 base and the run asks for base_precision 'bf16'")
    if offload_blocks and block_offload(model) is None:
        BlockOffload(model, offload_blocks, device)
    return model


def _set_peft_input_casting(model, enabled: bool) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            m.cast_input_dtype_enabled = enabled


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def _training_settings(cfg: TrainConfig) -> dict:
    keep = (
        "steps",
        "batch_size",
        "grad_accum",
        "lr",
        "lr_schedule",
        "warmup_steps",
        "weight_decay",
        "max_grad_norm",
        "sigma_dist",
        "weighting",
        "repeats",
        "flip",
        "caption_dropout",
        "seed",
        "precision",
    )
    return {k: getattr(cfg, k) for k in keep}


def train(cfg: TrainConfig, callbacks: TrainCallbacks | None = None, data=None) -> TrainResult:
    """Setup + loop + export. `data` (optional) replaces data_dir: see core.train.data.StreamData."""
    return Trainer(cfg, callbacks, data=data).run()


def train_full(cfg: TrainConfig, callbacks: TrainCallbacks | None = None, data=None) -> TrainResult:
    """The same loop on every weight (no LoRA), e.g. pretraining a small model on core.synth scenes."""
    return train(replace(cfg, full=True), callbacks, data)
