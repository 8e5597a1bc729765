"""The memory plan: will a job fit on this worker's GPU, with which settings, or what to tell the owner.

    python -m worker.memory_plan [MODEL_PATH] [--fp8]   # the table for 16 / 24 / 48 / 80 / 141 GB cards (README's)

A job is checked before any weight is loaded: a training that cannot fit fails at once with a message
naming the numbers, one that fits only with gradient checkpointing gets it turned on, and one that fits as
asked runs as asked ("auto" checkpointing becomes off when the activations fit: ~8% faster per step). The
estimates are linear fits of peaks measured on an H200 with the full-size model (bench/RESULTS.md,
"Memory plan"); for another model size they scale with its weights and with layers x hidden:

    training   = weights (bf16, or fp8: core/fp8.py) + 16 B per LoRA parameter (fp32 weight, grad, 2 AdamW moments)
                 + tokens x batch x (0.63 MiB with checkpointing | 5.1 MiB without)      [36 x 4096 model]
    generation = weights (bf16) + tokens x rows x 0.15 MiB    (rows = 2 x images with CFG, 1 without)
    fp8 base   = weights 8.78 GiB at full size (the decoder linears in float8); training with checkpointing
                 0.46 MiB per token (measured once at 1024^2: 10.0 GiB, compiled or not)
    a text-to-image training keeps the vision tower (1.07 GiB at full size) in host memory (core.train.Trainer)

tokens = (side / 32)^2 image patches + ~100 text tokens + the reference images' tokens (core.reference_sizes:
each reference's vision-tower placeholders in the prompt and its raw 32 px patches after the target; the
vision tower's own activations are transient and small beside the decoder's and are not counted). A
training on an edit dataset counts its largest reference set (core.data.reference_need), for every sample
of the batch. Measured at 1024^2 / 2048^2: training 16.5 / 18.4
GiB with checkpointing, 21.5 / 36.8 GiB without, batch 4 at 1024^2 without 37.9 GiB; generation 15.6 /
16.5 GiB (weights 15.25 GiB). A headroom (O1LORA_GPU_MEMORY_HEADROOM_GIB, default 1.5) is kept free for
the allocator's fragmentation and CUDA workspaces.

The estimates are torch-free (config.json and the checkpoint's file sizes); only gpu_memory() imports torch,
when a worker asks.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

GIB = 2**30
MIB = 2**20
# The full-size text tower the coefficients were measured on.
_REF_LAYERS, _REF_HIDDEN = 36, 4096
TRAIN_PER_TOKEN = {True: 0.63 * MIB, False: 5.1 * MIB}  # by gradient checkpointing
# fp8 base with checkpointing: 10.01 GiB at 1024^2 eager and 10.02 compiled on the H200 with the vision tower
# resident (bench/RESULTS.md, issue 15: the compiled layer recomputes every op, core.model.run_layer_recomputed;
# before that it kept its fp8 matmuls' outputs, 12.52 GiB), 8.21 GiB with 12 of the 36 layers offloaded (the
# memory-cap runs). One measured point; without checkpointing the fp8 path was not measured and bf16's
# coefficient is used.
TRAIN_PER_TOKEN_FP8 = {True: 0.46 * MIB, False: 5.1 * MIB}  # (10.01 - 8.82 weights - 0.69 LoRA, AdamW) / 1124
OFFLOAD_STEPS = (6, 12, 18, 24)  # layers the plan tries to offload, fewest first (each costs speed)
GEN_PER_TOKEN_ROW = 0.15 * MIB
TEXT_TOKENS = 100  # a long prompt in the chat template


class MemoryPlanError(ValueError):
    """The job cannot fit on this worker's GPU; the message is written for the owner."""


@dataclass(frozen=True)
class ModelShape:
    weight_bytes: int  # the base in bf16 (as the CUDA workers hold it)
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    vision_bytes: int = 0  # the vision tower in bf16: host memory during a text-to-image training

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "ModelShape":
        """From config.json and the safetensors sizes (no weight read). Folder or ComfyUI single file."""
        path = Path(path)
        folder = path.parent if path.is_file() else path
        cfg = json.loads((folder / "config.json").read_text())
        text = cfg.get("text_config", cfg)
        files = [path] if path.is_file() else sorted(folder.glob("*.safetensors"))
        stored = sum(f.stat().st_size for f in files)
        dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or text.get("dtype") or "bfloat16")
        per = 4 if "32" in dtype else 2
        return cls(
            weight_bytes=stored * 2 // per,
            layers=int(text["num_hidden_layers"]),
            hidden=int(text["hidden_size"]),
            heads=int(text["num_attention_heads"]),
            kv_heads=int(text["num_key_value_heads"]),
            head_dim=int(text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]),
            mlp=int(text["intermediate_size"]),
            vision_bytes=_stored_bytes(files, ".visual.") * 2 // per,
        )

    @property
    def scale(self) -> float:
        """Activation size per token relative to the model the coefficients were measured on."""
        return self.layers * self.hidden / (_REF_LAYERS * _REF_HIDDEN)

    @property
    def linear_params(self) -> int:
        """Parameters of the 7 decoder linears of every layer: what an fp8 base (core/fp8.py) holds in float8."""
        h, q, kv, m = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.mlp
        return (h * q + 2 * h * kv + q * h + 3 * h * m) * self.layers

    def base_bytes(self, base_precision: str = "bf16") -> int:
        """The resident base: bf16, or with its decoder linears in fp8 (1 byte each, + a float32 scale per
        output channel: 5.6 MB at full size). Full size: 15.25 GiB bf16, 8.78 GiB fp8."""
        if base_precision != "fp8":
            return self.weight_bytes
        h, q, kv, m = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.mlp
        scales = 4 * (q + 2 * kv + h + 2 * m + h) * self.layers
        return self.weight_bytes - self.linear_params + scales

    def merge_copy_bytes(self, base_precision: str = "bf16") -> int:
        """What merging LoRAs keeps aside (core.lora.merge): the decoder linears once more in bf16, for a bf16 base
        and for an fp8 one alike (an fp8 base keeps its linears in full precision, which merges round from).
        Full size: 12.9 GiB (the optional targets add under 0.1%); on a loaded model core.lora.merge_copy_bytes
        counts it exactly."""
        return self.linear_params * 2

    def lora_params(self, rank: int) -> int:
        """Parameters of a LoRA on the 7 linears of every layer (q, k, v, o, gate, up, down)."""
        h, q, kv, m = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.mlp
        per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + m) + (m + h)
        return rank * per_layer * self.layers


FULL_SIZE = ModelShape(
    weight_bytes=int(15.25 * GIB),
    layers=36,
    hidden=4096,
    heads=32,
    kv_heads=8,
    head_dim=128,
    mlp=12288,
    vision_bytes=2 * 576_388_336,  # 1.07 GiB: the vision tower's 576 M parameters
)


def _stored_bytes(files: list[Path], part: str) -> int:
    """Bytes of the tensors whose names contain `part`, from the safetensors headers (no weight is read)."""
    from core.lora.check import read_header  # torch-free, offsets checked

    total = 0
    for f in files:
        with open(f, "rb") as fh:
            header, _, _ = read_header(fh, f.stat().st_size)
        for name, entry in header.items():
            if part in f".{name}":
                start, end = entry["data_offsets"]
                total += end - start
    return total


def tokens(width: int, height: int, reference_tokens: int = 0) -> int:
    return (width // 32) * (height // 32) + TEXT_TOKENS + reference_tokens


def training_need(
    shape: ModelShape,
    *,
    resolution: int,
    batch: int = 1,
    rank: int = 16,
    checkpointing: bool = True,
    base_precision: str = "bf16",
    reference_tokens: int = 0,
    offload_blocks: int = 0,
    vision_resident: bool = True,
) -> int:
    """reference_tokens: what the references of the dataset's largest reference set add to one sample.
    offload_blocks (an fp8 base with checkpointing only: what the plan falls back to on small cards): that many
    layers' frozen weights in host memory (two layers' worth stay on the device as the slots they are streamed
    into, core/offload.py). vision_resident=False: the vision tower waits in
    host memory (core.train.Trainer does so for a text-to-image run in one process)."""
    per_token = (TRAIN_PER_TOKEN_FP8 if base_precision == "fp8" else TRAIN_PER_TOKEN)[bool(checkpointing)]
    act = per_token * shape.scale * tokens(resolution, resolution, reference_tokens) * batch
    base = shape.base_bytes(base_precision) - (0 if vision_resident else shape.vision_bytes)
    if offload_blocks:
        layer = shape.linear_params // shape.layers * (1 if base_precision == "fp8" else 2)
        base -= (min(offload_blocks, shape.layers) - 2) * layer
    return int(base + 16 * shape.lora_params(rank) + act)


def generation_need(
    shape: ModelShape,
    *,
    width: int,
    height: int,
    images: int = 1,
    cfg: bool = True,
    weights_resident: bool = False,
    base_precision: str = "bf16",
    reference_tokens: int = 0,
    vision_parked: bool = False,
    parks_vision: bool = True,
) -> int:
    """reference_tokens: what the request's references add to each row (CFG's unconditional row keeps them).
    The generation worker parks the vision tower in host memory once the base is loaded (core.model's
    park_vision) and brings it back for the first reference image. A base still to load (parks_vision): its
    peak is the whole base while loading, then the base without the tower plus the activations. A resident base
    (weights_resident): vision_parked says the tower waits on the host, which a request with references brings
    back. parks_vision=False: the tower stays (as the H200 measurements of the fit were made)."""
    rows = images * (2 if cfg else 1)
    act = GEN_PER_TOKEN_ROW * shape.scale * tokens(width, height, reference_tokens) * rows
    if weights_resident:
        return int(act + (shape.vision_bytes if reference_tokens and vision_parked else 0))
    base = shape.base_bytes(base_precision)
    if parks_vision and not reference_tokens:
        return int(max(base, base - shape.vision_bytes + act))
    return int(base + act)


@dataclass(frozen=True)
class Plan:
    action: Literal["run", "adjust", "refuse"]
    need_bytes: int
    free_bytes: int
    checkpointing: bool | None = None  # training: the setting to run with
    message: str = ""
    eager: bool = False  # training: compile off (an fp8 base whose compiled layer does not fit)
    offload_blocks: int = 0  # training: layers to keep in host memory (core/offload.py)

    @property
    def runs(self) -> bool:
        return self.action != "refuse"

    def raise_if_refused(self) -> "Plan":
        if self.action == "refuse":
            raise MemoryPlanError(self.message)
        return self


def _gib(n: int | float) -> str:
    return f"{n / GIB:.1f} GiB"


def plan_training(
    shape: ModelShape,
    *,
    resolution: int,
    batch: int,
    rank: int,
    checkpointing: bool | str,
    free_bytes: int,
    total_bytes: int,
    headroom_bytes: int,
    base_precision: str = "bf16",
    reference_tokens: int = 0,
    reference_count: int = 0,
    small_card_fallbacks: bool = True,
    vision_resident: bool | None = None,
) -> Plan:
    """Run as asked, turn checkpointing on to fit, or refuse (message for the owner). reference_tokens /
    reference_count: the dataset's largest reference set (tokens it adds to a sample, images in it).
    An fp8 base that does not fit runs with layers offloaded (uncompiled), where that fits (small_card_fallbacks:
    the caller may decline, e.g. when compile or offload was set explicitly; an uncompiled fp8 layer alone no
    longer saves memory: the compiled one recomputes as much). vision_resident: whether the vision tower stays
    on the GPU; None: only for a dataset with references (the trainer's rule for a run in one process)."""
    if vision_resident is None:
        vision_resident = reference_tokens > 0
    usable = free_bytes - headroom_bytes
    need = {
        c: training_need(
            shape,
            resolution=resolution,
            batch=batch,
            rank=rank,
            checkpointing=c,
            base_precision=base_precision,
            reference_tokens=reference_tokens,
            vision_resident=vision_resident,
        )
        for c in (False, True)
    }
    what = f"training at {resolution} px, batch {batch}, rank {rank}"
    if reference_tokens:
        what += f" with up to {reference_count} reference image(s) per sample ({reference_tokens} more tokens)"
    if checkpointing in (False, "auto") and need[False] <= usable:
        return Plan("run", need[False], free_bytes, checkpointing=False)
    if need[True] <= usable:
        if checkpointing is False:
            return Plan(
                "adjust",
                need[True],
                free_bytes,
                checkpointing=True,
                message=f"gradient checkpointing turned on: without it {what} needs about "
                f"{_gib(need[False])} of GPU memory and {_gib(free_bytes)} are free",
            )
        return Plan("run", need[True], free_bytes, checkpointing=True)
    if base_precision == "fp8" and small_card_fallbacks:
        common = dict(
            resolution=resolution,
            batch=batch,
            rank=rank,
            checkpointing=True,
            base_precision="fp8",
            reference_tokens=reference_tokens,
            vision_resident=vision_resident,
        )
        for n in (k for k in OFFLOAD_STEPS if k < shape.layers):
            need_n = training_need(shape, offload_blocks=n, **common)
            if need_n <= usable:
                return Plan(
                    "adjust",
                    need_n,
                    free_bytes,
                    checkpointing=True,
                    eager=True,
                    offload_blocks=n,
                    message=f"{what} keeps {n} of the {shape.layers} layers in host memory and streams them to "
                    f"the GPU, uncompiled (about 2.6x slower per step): otherwise it needs about {_gib(need[True])} of "
                    f"GPU memory and {_gib(free_bytes)} are free",
                )
    return Plan(
        "refuse",
        need[True],
        free_bytes,
        checkpointing=True,
        message=f"not enough GPU memory: {what} needs about {_gib(need[True])} even with gradient "
        f"checkpointing (plus {_gib(headroom_bytes)} headroom); this worker's GPU has "
        f"{_gib(free_bytes)} free of {_gib(total_bytes)}. Lower the resolution or the batch "
        f"size{', use fewer or smaller reference images' if reference_tokens else ''}, or run it on a worker "
        f"with a larger GPU.",
    )


def plan_generation(
    shape: ModelShape,
    *,
    width: int,
    height: int,
    images: int,
    cfg: bool,
    weights_resident: bool,
    free_bytes: int,
    total_bytes: int,
    headroom_bytes: int,
    base_precision: str = "bf16",
    reference_tokens: int = 0,
    vision_parked: bool = False,
) -> Plan:
    need = generation_need(
        shape,
        width=width,
        height=height,
        images=images,
        cfg=cfg,
        weights_resident=weights_resident,
        base_precision=base_precision,
        reference_tokens=reference_tokens,
        vision_parked=vision_parked,
    )
    if need <= free_bytes - headroom_bytes:
        return Plan("run", need, free_bytes)
    refs = f" with reference images adding {reference_tokens} tokens each" if reference_tokens else ""
    return Plan(
        "refuse",
        need,
        free_bytes,
        message=f"not enough GPU memory: {images} image(s) of {width}x{height}{refs} need about {_gib(need)}"
        f"{' more' if weights_resident else ''} (plus {_gib(headroom_bytes)} headroom); this "
        f"worker's GPU has {_gib(free_bytes)} free of {_gib(total_bytes)}. Ask for fewer images "
        f"per request{', fewer or smaller reference images' if reference_tokens else ''} or a smaller size.",
    )


def choose_lora_mode(
    requested: str,
    *,
    lora_max_rank: int,
    offload_blocks: int,
    free_bytes: int | None,
    copy_bytes: int,
    reserve_bytes: int,
) -> str:
    """How a generation worker applies LoRAs: "merge" where the kept copy fits (free_bytes None = not a GPU:
    always), leaving reserve_bytes free for the activations; else "slots", or "hooks" with lora_max_rank 0.
    An explicit "merge" on a model with offloaded layers is a ValueError (their weights are streamed).

    An fp8 base merges too: from its full-precision linears, read again from the checkpoint (core.lora.merge says
    why not from its fp8 values), so its copy is the bf16 one's size. Beside the linears (slots) an fp8 step cost
    +46% on the H200 (3.46 vs 2.37 s per 1024^2 image), merged nothing."""
    if requested not in ("auto", "merge", "slots"):
        raise ValueError(f"O1LORA_LORA_APPLY must be auto, merge or slots; got {requested!r}")
    fallback = "slots" if lora_max_rank > 0 else "hooks"
    if requested == "slots":
        return fallback
    if offload_blocks:
        if requested == "merge":
            raise ValueError("O1LORA_LORA_APPLY=merge needs every layer on the GPU, but offload_blocks is set")
        return fallback
    if requested == "merge":
        return "merge"
    if free_bytes is None or free_bytes - copy_bytes >= reserve_bytes:
        return "merge"
    log.info(
        "LoRAs by %s: merging needs a %s copy, %s is free and %s is kept for activations",
        fallback,
        _gib(copy_bytes),
        _gib(free_bytes),
        _gib(reserve_bytes),
    )
    return fallback


def merge_reserve(settings, model_path, warmup_sizes: list[tuple[int, int]]) -> int:
    """GPU memory a generation worker keeps free beside a LoRA merge copy: the headroom and the activations of
    its largest batch (O1LORA_GENERATE_MAX_BATCH images, CFG) at its largest warm-up size (1024^2 at least)."""
    w, h = max([(1024, 1024), *warmup_sizes], key=lambda s: s[0] * s[1])
    act = generation_need(
        ModelShape.from_checkpoint(model_path),
        width=w,
        height=h,
        images=settings.generate_max_batch,
        weights_resident=True,
    )
    return act + int(settings.gpu_memory_headroom_gib * GIB)


def gpu_memory() -> tuple[int, int] | None:
    """(free, total) bytes of this process's GPU, or None without CUDA (then nothing is planned)."""
    import os

    import torch

    if not torch.cuda.is_available():
        return None
    # a rank of a multi-GPU job plans for its own GPU (torchrun's LOCAL_RANK), before the trainer selects it
    return torch.cuda.mem_get_info(int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))


def check_generation(
    settings,
    *,
    model_path,
    images: int,
    width: int,
    height: int,
    cfg: bool,
    reference_sizes: list[tuple[int, int]] = (),
    vision_parked: bool = False,
) -> None:
    """MemoryPlanError when a batch of `images` cannot fit beside the resident base (called with it loaded).
    reference_sizes: (width, height) of the request's reference images, as decoded; vision_parked: the vision
    tower waits in host memory (references bring it back)."""
    mem = gpu_memory() if settings.memory_plan == "enforce" else None
    if mem is None:
        return
    from core.reference_sizes import total_reference_tokens

    plan_generation(
        ModelShape.from_checkpoint(model_path),
        width=width,
        height=height,
        images=images,
        cfg=cfg,
        weights_resident=True,
        free_bytes=mem[0],
        total_bytes=mem[1],
        headroom_bytes=int(settings.gpu_memory_headroom_gib * GIB),
        reference_tokens=total_reference_tokens(list(reference_sizes), height, width),
        vision_parked=vision_parked,
    ).raise_if_refused()


def out_of_memory_message(kind: str, error: BaseException) -> str:
    """What the owner reads when CUDA ran out of memory mid-job anyway (another process took memory, or the
    estimate was short): the job failed cleanly, nothing was kept; the original error for the operator."""
    first = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    hint = (
        "lower the resolution or the batch size"
        if kind == "training"
        else "ask for fewer images per request or a smaller size"
    )
    return (
        f"the GPU ran out of memory during this {kind}; {hint}, or retry when the worker is less busy "
        f"({type(error).__name__}: {first})"
    )


def card_table(shape: ModelShape = FULL_SIZE, headroom_gib: float = 1.5, base_precision: str = "bf16") -> str:
    """What fits where: the README's table (a card's GiB less ~0.6 GiB of CUDA context; "24 GB" cards have
    23.99 GiB). fp8: the decoder linears in float8 (core/fp8.py); the activation terms are bf16's (the fp8
    path's per-token cost was not fitted separately)."""
    cards = [
        ("12 GB", 11.4),
        ("16 GB", 15.4),
        ("24 GB", 23.4),
        ("48 GB", 47.4),
        ("80 GB", 79.4),
        ("141 GB (H200)", 139.8),
    ]
    rows = ["| job | " + " | ".join(c for c, _ in cards) + " |", "|---|" + "---|" * len(cards)]

    def cell(p: Plan) -> str:
        if p.action == "refuse":
            return f"no ({_gib(p.need_bytes)})"
        if p.offload_blocks:
            return f"offload {p.offload_blocks}, eager ({_gib(p.need_bytes)})"
        return f"{'ckpt' if p.checkpointing else 'yes'} ({_gib(p.need_bytes)})"

    for res, batch in ((1024, 1), (2048, 1), (1024, 4)):
        plans = [
            plan_training(
                shape,
                resolution=res,
                batch=batch,
                rank=16,
                checkpointing="auto",
                free_bytes=int(free * GIB),
                total_bytes=int(free * GIB),
                headroom_bytes=int(headroom_gib * GIB),
                base_precision=base_precision,
            )
            for _, free in cards
        ]
        rows.append(f"| training {res}^2, batch {batch}, r16 | " + " | ".join(cell(p) for p in plans) + " |")
    for side, n in ((1024, 1), (2048, 1), (1024, 8)):
        plans = [
            plan_generation(
                shape,
                width=side,
                height=side,
                images=n,
                cfg=True,
                weights_resident=False,
                free_bytes=int(free * GIB),
                total_bytes=int(free * GIB),
                headroom_bytes=int(headroom_gib * GIB),
                base_precision=base_precision,
            )
            for _, free in cards
        ]
        rows.append(f"| generation {side}^2 x{n}, CFG | " + " | ".join(cell(p) for p in plans) + " |")
    both = [
        training_need(shape, resolution=1024, checkpointing=True, base_precision=base_precision)
        + shape.base_bytes(base_precision)
        + int(headroom_gib * GIB)
        <= free * GIB
        for _, free in cards
    ]
    rows.append(
        "| training 1024^2 + generation model resident | "
        + " | ".join("yes" if b else "no: released first" for b in both)
        + " |"
    )
    # O1LORA_LORA_APPLY=auto on a generation worker (1024^2, the default max batch of 4, CFG)
    reserve = generation_need(shape, width=1024, height=1024, images=4, weights_resident=True) + int(
        headroom_gib * GIB
    )
    modes = [
        choose_lora_mode(
            "auto",
            lora_max_rank=64,
            offload_blocks=0,
            free_bytes=int((free * GIB) - shape.base_bytes(base_precision)),
            copy_bytes=shape.merge_copy_bytes(base_precision),
            reserve_bytes=reserve,
        )
        for _, free in cards
    ]
    copy = _gib(shape.merge_copy_bytes(base_precision))
    rows.append(
        "| generation LoRAs (`O1LORA_LORA_APPLY=auto`) | "
        + " | ".join(f"merged (+{copy})" if m == "merge" else "slots" for m in modes)
        + " |"
    )
    return "\n".join(rows)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    shape = ModelShape.from_checkpoint(args[0]) if args else FULL_SIZE
    print(card_table(shape, base_precision="fp8" if "--fp8" in sys.argv else "bf16"))
