"""LoRA training speed at full HiDream-O1 size: the published recipe vs our trainer, in one process.

    python bench/bench_training.py                 # H200: full-size random bf16 model, ~5 min
    python bench/bench_training.py --tiny          # CPU smoke test of every code path (seconds)
    python bench/bench_training.py --variants recipe,ours --steps 10

The model has the real shape (hidden 4096, 36 layers, 32/8 heads, head_dim 128, MLP 12288, vocab 151936,
the 27-block vision tower) with random bf16 weights built directly on the GPU; the LoRA is rank 16 on the
252 q/k/v/o/gate/up/down linears. A step is one optimizer step on a batch of random images with a ~70-token
prose caption. Per variant: build, warm up (compilation happens here), then time `--steps` steps between
two synchronisations; peak memory is the allocator's peak over the timed steps (weights included).

Variants:
  recipe        the published recipe as written: PEFT LoRA (fp32 adapter, PEFT's input casts), dense additive
                S x S attention mask (the model's reference path), gradient checkpointing on, bf16 autocast,
                foreach AdamW, a loss.item() every step
  ours          core.train.Trainer as shipped on CUDA: bf16 frozen base, split attention (two SDPA calls,
                no mask), no PEFT input casts, fused AdamW, regional torch.compile of the decoder layers,
                gradient checkpointing on, no host sync per step, batches prefetched in pinned memory
  ours-nockpt   the same without gradient checkpointing (faster, more memory)
  ours-varied   ours-nockpt on captions of 12 lengths (real datasets): does a varying sequence length cost?
  ours-eager    ours without torch.compile (how much compile buys)
  ours-graphs / ours-nockpt-graphs: ours / ours-nockpt with the compiled layer in mode "reduce-overhead" (CUDA
                graphs: the step launches ~5,400 kernels, and the GPU was measured busy 40% of it)
  ours-2048     ours at 2048 x 2048;  ours-b4: ours at batch 4 (1024); both with checkpointing "auto" (the
                trainer's default: on only when the estimated activations do not fit in free memory)
Each variant runs in its own try: an OOM or a compile failure is reported in the table, the rest still runs.
The markdown table is printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CAPTION = (
    "sks style, a quiet harbour town at dusk painted in loose watercolour washes, small boats "
    "resting on calm water that reflects warm orange lamps, narrow houses with blue shutters climbing "
    "a hill, soft clouds drifting over distant mountains, gentle light and muted colours, visible "
    "paper texture and bleeding edges where the pigment pooled"
)


@dataclass(frozen=True)
class Variant:
    name: str
    resolution: int = 1024
    batch: int = 1
    recipe: bool = False
    checkpointing: bool | str = True  # "auto": the trainer's own choice from free memory
    compile: bool | str = True  # "module": the older per-module layer.compile()
    varied: bool = False  # captions of 12 different lengths (as real datasets), not one


VARIANTS = {
    "recipe": Variant("recipe", recipe=True, compile=False),
    "ours": Variant("ours"),
    "ours-nockpt": Variant("ours-nockpt", checkpointing=False),
    "ours-varied": Variant("ours-varied", checkpointing=False, varied=True),
    "ours-eager": Variant("ours-eager", compile=False),
    "ours-modcompile": Variant("ours-modcompile", compile="module"),
    "ours-nockpt-graphs": Variant("ours-nockpt-graphs", checkpointing=False, compile="reduce-overhead"),
    "ours-graphs": Variant("ours-graphs", compile="reduce-overhead"),
    "ours-2048": Variant("ours-2048", resolution=2048, checkpointing="auto"),
    "ours-b4": Variant("ours-b4", batch=4, checkpointing="auto"),
}
DEFAULT = "recipe,ours,ours-nockpt,ours-eager,ours-2048,ours-b4"


SDPA_BACKENDS: list = []  # --sdpa


def model_spec(tiny: bool):
    from core.tiny import TinySpec

    if tiny:
        return TinySpec(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, mlp=128)
    return TinySpec(
        hidden=4096,
        layers=36,
        heads=32,
        kv_heads=8,
        head_dim=128,
        mlp=12288,
        vision_hidden=1152,
        vision_depth=27,
        vision_heads=16,
        vision_mlp=4304,
        deepstack=(8, 16, 24),
        vision_grid=48,
    )


def build_model(spec, tokenizer, device: torch.device, vocab: int | None):
    """Random bf16 weights, allocated and initialised on `device` (no host copy of 16 GB)."""
    from core.loading import set_token_ids
    from core.model import HiDreamO1
    from core.tiny import tiny_config

    cfg = tiny_config(spec, tokenizer)
    if vocab:
        cfg.text_config.vocab_size = vocab
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            model = HiDreamO1(cfg)  # nn defaults: kaiming-uniform linears, N(0, 1) embeddings
    finally:
        torch.set_default_dtype(old)
    model.reset_rotary()  # float32 rotary frequencies, as load_model leaves them
    set_token_ids(model, tokenizer)
    return model.eval()


def random_stream(resolution: int, varied: bool = False):
    def make(start: int):
        for i in itertools.count(start):
            g = torch.Generator().manual_seed(i)
            # varied: 12 caption lengths, as a dataset has; the compiled layers then see more than one
            # sequence length (bench_train_paths measured the CLI 1.44x slower than one fixed caption)
            caption = CAPTION + ", with more detail" * (i % 12) if varied else CAPTION
            yield torch.rand(3, resolution, resolution, generator=g) * 2 - 1, caption

    return make


def make_trainer(v: Variant, model, tokenizer, device, out_dir: Path):
    from core.train.data import StreamData
    from core.train.trainer import TrainConfig, Trainer, _set_peft_input_casting

    cfg = TrainConfig(
        model_path="<random>",
        out_dir=str(out_dir),
        resolution=v.resolution,
        steps=10**6,
        batch_size=v.batch,
        rank=16,
        alpha=16.0,
        lr=1e-4,
        device=str(device),
        precision="bf16",
        gradient_checkpointing=v.checkpointing,
        compile=v.compile in (True, "reduce-overhead") and not v.recipe,
        checkpoint_every=0,
        sample_every=0,
    )
    # the model is shared by the variants: undo an earlier variant's compilation first
    from core.model import run_layer

    model._layer_fn = run_layer
    for layer in model.model.language_model.layers:
        layer._compiled_call_impl = None
    trainer = Trainer(
        cfg, data=StreamData(random_stream(v.resolution, v.varied), v.batch), model=model, tokenizer=tokenizer
    )
    if v.compile == "reduce-overhead":  # the compiled layer replayed as CUDA graphs (inductor's cudagraph trees)
        model.compile_layers(mode="reduce-overhead")
    if v.compile == "module":  # the older regional form: layer.compile(), checkpoint around the compiled module
        for layer in model.model.language_model.layers:
            layer.compile()
    if v.recipe:
        model.validate_inputs = True  # the official forward reads its inputs back on the host (syncs)
        # The recipe's choices, applied to the same trainer so that only they differ.
        # reference_forward is the model's official dense-mask pass; it is decorated no_grad for its use as
        # an oracle, so the undecorated function is called to train through it.
        dense = type(model).reference_forward
        trainer.forward = partial(getattr(dense, "__wrapped__", dense), model)
        _set_peft_input_casting(model, True)
        trainer.optimizer = torch.optim.AdamW(trainer.params, lr=cfg.lr, fused=False, foreach=True)
        trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda s: 1.0)
    return trainer


def profile_step(step, on_cuda: bool, top: int = 8) -> str:
    """One more step under torch.profiler: how many kernels it launched and which took the time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    float(step())  # the step before ends here: the profiled one starts with the GPU idle
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        float(step())
        wall = time.perf_counter() - t
    key = "self_device_time_total" if on_cuda else "self_cpu_time_total"
    events = prof.key_averages()
    gpu = [e for e in events if on_cuda and str(getattr(e, "device_type", "")).endswith("CUDA")]
    kernels = sum(e.count for e in gpu)
    busy = sum(getattr(e, key, 0) for e in gpu) / 1e3
    table = events.table(sort_by=key, row_limit=top, max_name_column_width=60)
    return (
        f"   one step: wall {wall * 1e3:.1f} ms, GPU kernels {busy:.1f} ms, "
        f"{kernels if on_cuda else 'n/a (CPU)'} kernels\n{table}"
    )


def measure(v: Variant, spec, tokenizer, device, vocab, steps: int, warmup: int, profile: bool = False) -> dict:
    on_cuda = device.type == "cuda"
    if on_cuda:  # anything still allocated here leaked from the previous variant and would inflate the peak
        print(f"   allocated before building: {torch.cuda.memory_allocated() / 2**30:.2f} GiB", flush=True)
    model = build_model(spec, tokenizer, device, vocab)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(v, model, tokenizer, device, Path(tmp))
        ckpt_used = trainer.checkpointing
        from core.train.data import Prefetch

        # as Trainer.run: batches made ahead on a thread in pinned memory (a pageable host-to-device copy
        # blocks the host until the GPU has drained the previous step, i.e. a sync per step)
        batches = Prefetch(iter(trainer.data), trainer.cfg.prefetch)

        def step():
            if v.compile == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()  # a new iteration: last step's graph outputs are done
            loss = trainer.train_step(batches)  # noqa: F821 (bound above; deleted later)
            if v.recipe:
                loss.item()  # the recipe logs every step: a host sync per step
            return loss

        sdpa = contextlib.nullcontext()
        if SDPA_BACKENDS:  # --sdpa: the attention backends allowed, in this order
            from torch.nn.attention import sdpa_kernel

            sdpa = sdpa_kernel(SDPA_BACKENDS, set_priority=True)
        sdpa.__enter__()
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        if on_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        losses = [step() for _ in range(steps)]
        last = float(losses[-1])  # also the end-of-window synchronisation
        if on_cuda:
            torch.cuda.synchronize()
        sec = (time.perf_counter() - t0) / steps
        peak = torch.cuda.max_memory_allocated() / 2**30 if on_cuda else float("nan")
        if profile:
            print(profile_step(step, on_cuda), flush=True)
        sdpa.__exit__(None, None, None)
        n_tokens = (v.resolution // 32) ** 2
        batches.close()
    del trainer, model, batches
    torch._dynamo.reset()  # compiled graphs hold on to the old model's tensors
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    return {
        "ckpt": ckpt_used,
        "sec": sec,
        "peak_gib": peak,
        "warmup_s": warm_s,
        "loss": last,
        "tokens": n_tokens,
        "resolution": v.resolution,
        "batch": v.batch,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test on a tiny model at 64 px")
    ap.add_argument("--variants", default=DEFAULT, help=f"comma list of {sorted(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 10; tiny 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; tiny 1)")
    ap.add_argument("--no_compile", action="store_true", help="turn torch.compile off in every variant")
    ap.add_argument("--profile", action="store_true", help="after timing, profile one step per variant")
    ap.add_argument(
        "--sdpa",
        default="",
        help="SDPA backends allowed, in priority order, e.g. flash,efficient,math (default: torch's choice)",
    )
    args = ap.parse_args(argv)
    if args.sdpa:
        from torch.nn.attention import SDPBackend

        names = {
            "flash": "FLASH_ATTENTION",
            "efficient": "EFFICIENT_ATTENTION",
            "math": "MATH",
            "cudnn": "CUDNN_ATTENTION",
        }
        SDPA_BACKENDS[:] = [getattr(SDPBackend, names[b]) for b in args.sdpa.split(",")]

    from core.tiny import build_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cpu" and not args.tiny:
        ap.error("no CUDA device: run with --tiny for the CPU smoke test")
    steps = args.steps or (2 if args.tiny else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    spec = model_spec(args.tiny)
    tokenizer = build_tokenizer(CAPTION.replace(",", " ").split())
    vocab = None if args.tiny else 151936
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)

    rows = []
    for name in names:
        v = VARIANTS[name]
        if args.tiny:  # 64 px (4 tokens) / 128 px keep the smoke test small; compile is slow on 2 cores
            v = Variant(
                v.name,
                resolution=128 if v.resolution > 1024 else 64,
                batch=v.batch,
                recipe=v.recipe,
                varied=v.varied,
                checkpointing=v.checkpointing,
                compile=False,
            )
        if args.no_compile:
            v = Variant(v.name, v.resolution, v.batch, v.recipe, v.checkpointing, False, v.varied)
        print(f"== {name}: {v}", flush=True)
        try:
            r = measure(v, spec, tokenizer, device, vocab, steps, warmup, args.profile)
            print(
                f"   {r['sec']:.3f} s/step, peak {r['peak_gib']:.1f} GiB, warm-up {r['warmup_s']:.0f} s, "
                f"loss {r['loss']:.3f}",
                flush=True,
            )
            rows.append((v, r, None))
        except Exception as e:  # OOM, compile failure: report and go on with the others
            traceback.print_exc()
            rows.append((v, None, f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"))
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    base = next((r for v, r, _ in rows if v.recipe and r), None)
    print(
        "\n| variant | resolution | batch | ckpt | compile | s/step | steps/s | images/s | peak GiB | vs recipe |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for v, r, err in rows:
        ckpt = r["ckpt"] if r else v.checkpointing
        ckpt = ckpt if isinstance(ckpt, str) else ("on" if ckpt else "off")
        head = f"| {v.name} | {v.resolution} | {v.batch} | {ckpt} | {'on' if v.compile else 'off'} |"
        if r is None:
            print(f"{head} failed: {err} | | | | |")
            continue
        same_shape = base and (v.resolution, v.batch) == (base["resolution"], base["batch"])
        speed = f"{base['sec'] / r['sec']:.2f}x" if same_shape else "-"
        print(
            f"{head} {r['sec']:.3f} | {1 / r['sec']:.2f} | {v.batch / r['sec']:.2f} | "
            f"{r['peak_gib']:.1f} | {speed} |"
        )


if __name__ == "__main__":
    main()
