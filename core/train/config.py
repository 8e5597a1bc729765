"""What one training run does: TrainConfig, its checks, and the one mapping from a training request to it.

Imports no torch: the HTTP API builds its request schema on these fields (api.schemas.TrainingCreate) and the
worker turns a job's stored request into a config with `TrainConfig.from_request`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

# A training request (the HTTP API's TrainingCreate, a training job's params) names every TrainConfig field it
# sets by the field's own name, except these.
REQUEST_NAMES = {"learning_rate": "lr"}
BASE_PRECISIONS = ("auto", "bf16", "fp8")  # core.fp8.PRECISIONS (this module imports no torch)


@dataclass
class TrainConfig:
    model_path: str  # base checkpoint: HF folder (with tokenizer) or ComfyUI file
    out_dir: str  # checkpoints/, previews/, lora/, lora.safetensors go here
    data_dir: str | None = None  # folder or .zip of images (+ .txt / metadata.jsonl captions)
    trigger: str = ""  # prepended to every caption, and recorded in the LoRA metadata
    # -- the recipe
    resolution: int = 1024  # bucket area ~ resolution^2, aspect kept, sides multiples of 32
    steps: int = 2500  # optimizer steps (the recipe: 2,500 on ~190 images)
    batch_size: int = 1  # images per micro-batch (one aspect bucket each)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # AdamW learning rate (the usual LoRA rate for 8B DiTs)
    lr_schedule: str = "constant"  # "constant" or "cosine" after warm-up
    warmup_steps: int = 0  # linear warm-up from lr/warmup to lr
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    weight_decay: float = 0.0  # LoRA B starts at 0; decay would pull towards "no adapter"
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW defaults
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)
    rank: int = 16  # LoRA rank (the recipe)
    alpha: float = 16.0  # LoRA alpha; scale alpha/rank = 1 (the recipe)
    lora_dropout: float = 0.0  # the recipe has none
    extra_targets: tuple[str, ...] = ()  # add "x_embedder" / "final_layer2" to the LoRA targets
    full: bool = False  # train every weight (no LoRA): pretraining small models
    # -- objective (defaults are the recipe's)
    sigma_dist: str = "uniform"  # "uniform" U(0.001, 1) | "shifted" | "logit_normal"
    sigma_shift: float = 3.0  # for sigma_dist="shifted"
    weighting: str = "none"  # "velocity" = 1/sigma^2 on the x0 error
    # -- data
    repeats: int = 1  # each image this many times per epoch (small datasets)
    flip: bool = False  # random horizontal flips (off: styles with text/asymmetry)
    caption_dropout: float = 0.0  # fraction of captions replaced by " " (keeps CFG working)
    reference_dropout: float = 0.0  # edit datasets: fraction of samples trained without their
    # reference images (the LoRA then also works without any)
    prior_preservation: bool = False  # with a trigger and no reg/ images: the base model draws each
    # caption without the trigger first, and those images train as reg/ images (core/train/prior.py)
    num_workers: int = 0  # DataLoader workers (0: decode in the training process)
    min_side: int = 256  # images with a shorter side are rejected by validation (never more
    # than resolution: an image as large as the training size trains)
    # -- speed / precision
    device: str = "auto"  # "auto" = cuda when available, else cpu
    precision: str = "auto"  # "auto" = bf16 autocast on CUDA, fp32 on CPU; or "bf16" / "fp32"
    base_precision: str = "auto"  # the frozen base's linears: "bf16" (as precision says), "fp8" (float8
    # weights, core/fp8.py; fp8 matmuls on CUDA 8.9+) or "auto" (fp8 on cards of compute capability 8.9+ or
    # under 20 GiB, bf16 elsewhere: CPUs keep their float32 base)
    offload_blocks: int = 0  # decoder layers whose weights stay in host memory and are streamed to the GPU
    # one layer ahead (core/offload.py): less GPU memory, slower steps; needs gradient checkpointing
    gradient_checkpointing: bool | str = "auto"  # recompute activations in backward; "auto": on only when
    # the estimated activations would not fit in free GPU memory
    compile: bool | str = "auto"  # torch.compile the decoder layers (one shared compiled call,
    # gradient checkpointing traced inside it); "auto": on CUDA
    cuda_graphs: bool | str = "auto"  # replay the compiled decoder layers as CUDA graphs (2.1x per step at
    # 1024^2 on an H200); "auto": on for a compiled CUDA run in one process, no offload, no reference images,
    # grad_accum 1
    log_every: int = 1  # on_step every K steps (read one step late: no step waits for the GPU)
    prefetch: int = 2  # batches decoded ahead by a background thread (0: inline)
    grad_sync: str = "auto"  # several GPUs: "overlap" (all-reduce during backward) | "after" | "auto"
    # "after": one all-reduce after backward; "auto": overlap, or after for reference-image samples in batches
    # > 1 (one forward per sample: DDP allows one per backward). See core/train/distributed.py.
    seed: int = 0  # LoRA init, sigma/eps stream, data order
    # -- checkpoints and previews
    checkpoint_every: int = 500  # steps between checkpoints (0: only at the end / on stop)
    keep_checkpoints: int = 2  # newest checkpoints kept (0 keeps all)
    resume: str | None = None  # "latest" (newest in out_dir, else fresh) or a checkpoint path
    sample_every: int = 500  # steps between previews (0: none)
    sample_prompts: tuple[str, ...] = ()  # preview prompts (include the trigger)
    sample_steps: int = 20  # sampler steps for previews (fewer than the 50 of final images)
    sample_guidance: float = 5.0  # CFG for previews (the full model's default)
    sample_size: int | None = None  # preview side in pixels (None: resolution)
    sample_preset: str = "full"  # core.sampler preset ("full" / "dev")
    sample_seed: int = 0  # same seed for adapter on and off
    base_model_name: str = ""  # recorded in the LoRA metadata (default: model_path's name)
    # -- validation: a held-out loss at fixed noise (core/train/validation.py), the best step, early stop
    validation_fraction: float | None = None  # share of the images held out; None: auto (10% from 20 images up)
    validation_dir: str | None = None  # a separate validation folder or .zip (nothing is held out then)
    validation_max_images: int = 4  # at most this many images held out and evaluated
    validation_every: int = 500  # steps between validation losses (0: never); with previews and checkpoints
    validation_sigmas: int = 8  # fixed noise levels, evenly spread over (0, 1]
    validation_seeds: int = 2  # noise draws per image and level, the same at every evaluation
    publish: str = "last"  # LoRA published at the end: "last" step or "best" validation loss
    early_stop_patience: int = 0  # stop after this many evaluations without a new best (0: never)

    def validate(self) -> None:
        problems = []
        for name in ("steps", "batch_size", "grad_accum", "rank", "log_every", "sample_steps", "repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.compile not in (True, False, "auto"):
            problems.append(f"compile must be true, false or 'auto', got {self.compile!r}")
        if self.cuda_graphs not in (True, False, "auto"):
            problems.append(f"cuda_graphs must be true, false or 'auto', got {self.cuda_graphs!r}")
        if self.grad_sync not in ("auto", "overlap", "after"):
            problems.append(f"grad_sync must be 'auto', 'overlap' or 'after', got {self.grad_sync!r}")
        if not isinstance(self.prefetch, int) or self.prefetch < 0:
            problems.append(f"prefetch must be an integer >= 0, got {self.prefetch!r}")
        if self.gradient_checkpointing not in (True, False, "auto"):
            problems.append(
                f"gradient_checkpointing must be true, false or 'auto', got {self.gradient_checkpointing!r}"
            )
        if self.resolution < 32 or self.resolution % 32:
            problems.append(f"resolution must be a multiple of 32, got {self.resolution}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            problems.append(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            problems.append(f"precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")
        problems += self._base_problems()
        for name in ("warmup_steps", "checkpoint_every", "sample_every", "keep_checkpoints", "num_workers"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        problems += self._validation_problems()
        if not 0.0 <= self.reference_dropout <= 1.0:
            problems.append(f"reference_dropout must be in [0, 1], got {self.reference_dropout}")
        if self.sample_size is not None and (self.sample_size < 32 or self.sample_size % 32):
            problems.append(f"sample_size must be a multiple of 32, got {self.sample_size}")
        if problems:
            raise ValueError("bad training config: " + "; ".join(problems))

    def _base_problems(self) -> list[str]:
        problems = []
        if self.base_precision not in BASE_PRECISIONS:
            problems.append(f"base_precision must be 'auto', 'bf16' or 'fp8', got {self.base_precision!r}")
        elif self.full and self.base_precision == "fp8":
            problems.append("base_precision 'fp8' freezes the base: it cannot train every weight (full)")
        if not isinstance(self.offload_blocks, int) or self.offload_blocks < 0:
            problems.append(f"offload_blocks must be an integer >= 0, got {self.offload_blocks!r}")
        elif self.offload_blocks and self.full:
            problems.append("offload_blocks streams frozen weights: it cannot train every weight (full)")
        elif self.offload_blocks and self.gradient_checkpointing is False:
            problems.append("offload_blocks needs gradient checkpointing (leave it 'auto' or turn it on)")
        return problems

    def _validation_problems(self) -> list[str]:
        problems = []
        f = self.validation_fraction
        if f is not None and not (isinstance(f, (int, float)) and 0.0 <= f < 1.0):
            problems.append(f"validation_fraction must be in [0, 1) or None (auto), got {f!r}")
        for name in ("validation_max_images", "validation_sigmas", "validation_seeds"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("validation_every", "early_stop_patience"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                problems.append(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.publish not in ("last", "best"):
            problems.append(f"publish must be 'last' or 'best', got {self.publish!r}")
        return problems

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_request(
        cls, params: Mapping[str, Any], *, not_training: tuple[str, ...] = (), **fixed: Any
    ) -> "TrainConfig":
        """The config a training request asks for: request names mapped to fields (REQUEST_NAMES), JSON lists
        to tuples. `not_training` names request keys that describe the job rather than the run (the caller
        reads them elsewhere); `fixed` are fields the caller decides (paths, resume...) and win over the
        request. Any other key is an error, never silently dropped: a request knob the trainer does not know
        would otherwise train with a default nobody asked for."""
        known = {f.name for f in fields(cls)}
        kw, unknown = {}, []
        for key, value in params.items():
            name = REQUEST_NAMES.get(key, key)
            if name in known:
                kw[name] = tuple(value) if isinstance(value, list) else value
            elif key not in not_training:
                unknown.append(key)
        if unknown:
            raise ValueError(f"training request has parameters the trainer does not know: {sorted(unknown)}")
        bad = set(fixed) - known
        if bad:
            raise ValueError(f"not TrainConfig fields: {sorted(bad)}")
        kw.update(fixed)
        return cls(**kw)
