"""Where the generation worker's compiled denoise loses its speed: the sampler's compile variants side by side.

    python bench/bench_denoise_paths.py --layers 8                       # GPU, full width, 8 of the 36 layers
    python bench/bench_denoise_paths.py --layers 36 --variants eager-slots,layers-slots --compare
    python bench/bench_denoise_paths.py --tiny                           # the same code on the CPU (a check)

Every variant samples 1024^2, 50 steps, CFG 5, one image (cond + uncond rows in one batch) with a
~138-token prompt, through core.sampler.Sampler as the worker builds it, on random bf16 weights of the full
HiDream-O1 width (the layer count is an argument: a step's time is the sum of identical layers, and
fewer layers make each compile variant affordable; `est_s_36` scales to 36 layers). Variants:

  eager              no compile, no LoRA slots
  eager-slots        no compile, LoRA slots (capacity --slot-rank) holding a rank-16 LoRA
  denoise-static     the whole step compiled, nothing marked dynamic (what bench_sampling measured, 2.81 s)
  denoise            the whole step compiled, prompt length and batch marked dynamic (the sampler's default)
  denoise-slots      denoise + LoRA slots with a LoRA: the generation worker as measured in issue 8
  layers / layers-slots / layers-static-slots   compile_scope="layers" (one compiled decoder layer)
  layers-slots16     layers-slots with slot capacity 16
  layers-slots-off   layers with LoRA slots installed but no LoRA active (the slots switched off)
  layers-merged      layers with the LoRA merged into the weights (core.lora.merge: the worker's default
                     where the kept copy fits); eager-merged the same without compile
  layers-merged-fresh  layers-merged with no graph kept between requests (Sampler(keep_graphs=0)): with
                     --cuda-graph every request captures its own (core.step_graphs; before they were kept)

--fp8 converts the decoder linears to fp8 first (core.fp8, the generation worker's default on Hopper/Ada).

Per variant: the first call's seconds (compile), graphs compiled (dynamo's counter) after the first call,
after a prompt of another length and after a LoRA switch (must not grow), the switch's seconds, the median
of 3 timed 50-step images, and with --compare the final latents' difference from the eager path at the
same seed (eager-slots' for slot variants: the same LoRA), set against the noise floor of eager CFG-batched vs CFG as two calls (a bf16-only difference).
The last thing printed is a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import core.model as core_model  # noqa: E402
import core.sampler as core_sampler  # noqa: E402
from bench.bench_sampling import FULL, FULL_VOCAB, build_model, prompt_of_tokens  # noqa: E402
from core.lora import (  # noqa: E402
    BoundLora,
    LoraSpec,
    clear_loras,
    install_lora_merging,
    install_lora_slots,
    remove_lora_merging,
    remove_lora_slots,
    set_loras,
    target_names,  # noqa: E402
)
from core.sampler import ImageSpec, Sampler  # noqa: E402
from core.tiny import TinySpec  # noqa: E402

VARIANTS = [
    "eager",
    "eager-slots",
    "layers-slots",
    "layers",
    "denoise-slots",
    "denoise-static",
    "layers-static-slots",
    "layers-slots16",
    "layers-merged-fresh",
    "denoise",
    "layers-slots-off",
    "layers-merged",
    "eager-merged",
]  # most telling first (--until may cut the rest)
GUIDANCE = 5.0


def random_lora(model, name: str, rank: int, seed: int) -> BoundLora:
    g = torch.Generator(device=model.device).manual_seed(seed)
    mods = dict(model.named_modules())
    deltas = {}
    for path in target_names(model, LoraSpec()):
        lin = mods[path]
        down = torch.randn(rank, lin.in_features, generator=g, device=model.device, dtype=model.dtype)
        up = torch.randn(lin.out_features, rank, generator=g, device=model.device, dtype=model.dtype)
        deltas[path] = (down * lin.in_features**-0.5, up * 0.01)
    return BoundLora(name=name, deltas=deltas, unplaced=[])


def graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Static:
    """Nothing marked dynamic (the sampler's and the compiled layer's marks become no-ops)."""

    def __enter__(self):
        self.saved = (
            core_sampler.mark_prefix_dynamic,
            core_sampler.mark_batch_dynamic,
            core_model._mark_step_dynamic,
        )
        core_sampler.mark_prefix_dynamic = core_sampler.mark_batch_dynamic = lambda *a, **k: None
        core_model._mark_step_dynamic = lambda *a, **k: None

    def __exit__(self, *exc):
        core_sampler.mark_prefix_dynamic, core_sampler.mark_batch_dynamic, core_model._mark_step_dynamic = (
            self.saved
        )


def run_variant(name: str, model, tok, prompts: tuple[str, str], args, device) -> dict:
    torch._dynamo.reset()
    model.eager_layers()
    remove_lora_slots(model)
    compile_ = False if name.startswith("eager") else (args.backend or True)
    scope = "layers" if name.startswith("layers") else "denoise"
    capacity = 16 if name.endswith("slots16") else args.slot_rank
    merged = "merged" in name
    slots = "slots" in name or merged  # "slots": the variants with a LoRA (merged ones hold it in the weights)
    if merged:
        install_lora_merging(model)
    elif slots:
        install_lora_slots(model, capacity)
    static = Static() if "static" in name else None
    if static:
        static.__enter__()
    try:
        keep = 0 if name.endswith("-fresh") else 1
        s = Sampler(
            model, tok, preview_every=0, compile=compile_, compile_scope=scope, cuda_graph=args.cuda_graph,
            keep_graphs=keep,
        )  # fmt: skip
        size = args.size
        kw = dict(width=size, height=size, guidance=GUIDANCE, return_latents=True)
        with_lora = slots and not name.endswith("-off")
        lora_a, lora_b = (
            (random_lora(model, "a", 16, 1), random_lora(model, "b", 16, 2)) if slots else (None, None)
        )
        if with_lora:
            set_loras(model, [(lora_a, 1.0)])
        r = {"variant": name, "layers": args.layers}
        g0 = graphs()
        t = time.perf_counter()
        s.sample([ImageSpec(prompts[0], " ", 0)], steps=2, **kw)
        sync(device)
        r["first_call_s"] = time.perf_counter() - t
        r["graphs_first"] = graphs() - g0
        s.sample([ImageSpec(prompts[1], " ", 0)], steps=2, **kw)  # another prompt length
        r["graphs_after_length"] = graphs() - g0
        if with_lora:
            sync(device)
            t = time.perf_counter()
            set_loras(model, [(lora_b, 0.8)])
            sync(device)
            r["switch_ms"] = (time.perf_counter() - t) * 1e3
            s.sample([ImageSpec(prompts[0], " ", 0)], steps=2, **kw)
            r["graphs_after_switch"] = graphs() - g0
            set_loras(model, [(lora_a, 1.0)])
        times = []
        for _ in range(args.reps):
            sync(device)
            t = time.perf_counter()
            z = s.sample([ImageSpec(prompts[0], " ", 7)], steps=args.steps, **kw)
            sync(device)
            times.append(time.perf_counter() - t)
        if args.profile:
            try:
                r["profile"] = profile_steps(
                    lambda: s.sample([ImageSpec(prompts[0], " ", 7)], steps=3, **kw), device
                )
            except Exception:  # noqa: BLE001 - a profiler problem must not cost the timing
                traceback.print_exc()
        r["s_image"] = statistics.median(times)
        r["ms_step"] = r["s_image"] / args.steps * 1e3
        r["est_s_36"] = r["s_image"] * 36 / args.layers
        r["compile_failed"] = s.compile_failed or s.graph_failed
        r["kept_graph_hits"] = s.kept_steps.hits
        r["latents"] = z.float().cpu()
        if device.type == "cuda":
            r["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        return r
    finally:
        if static:
            static.__exit__()
        clear_loras(model)
        remove_lora_merging(model)


KERNEL_KINDS = [  # (kind, name fragments), first match wins; names are lower-cased
    ("attention", ("flash", "fmha", "attention", "cudnn", "sdpa")),
    ("gemm fp8", ("f8", "e4m3", "fp8", "scaled_mm")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "cublas")),
    ("fused (triton)", ("triton",)),
    ("copy / cat", ("copy", "cat", "memcpy", "memset", "index", "gather", "scatter")),
]


def profile_steps(call, device) -> dict:
    """GPU kernel time of one short sampling call by kind, and how busy the GPU was over its wall time (the
    rest is launch / host time the GPU waited for)."""
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        return {}
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        call()
        sync(device)
        wall = time.perf_counter() - t
    kinds, top = {}, []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if not us or e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = e.key.lower()
        kind = next((k for k, frags in KERNEL_KINDS if any(f in name for f in frags)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + us / 1e3
        top.append((us / 1e3, e.count, e.key[:90]))
    busy = sum(kinds.values())
    top.sort(reverse=True)
    return {
        "wall_ms": wall * 1e3,
        "busy_ms": busy,
        "kinds_ms": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "top": top[:12],
    }


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().mean() / b.abs().mean()).item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=138)
    ap.add_argument("--slot-rank", type=int, default=64)
    ap.add_argument("--backend", default=None, help="torch.compile backend (default inductor)")
    ap.add_argument("--compare", action="store_true", help="latents vs eager's and the bf16 noise floor")
    ap.add_argument("--until", type=float, default=0, help="unix time: start no variant after it")
    ap.add_argument("--fp8", action="store_true", help="decoder linears in fp8 (core.fp8.convert_to_fp8)")
    ap.add_argument(
        "--cuda-graph", action="store_true", help="Sampler(cuda_graph=True): each request's step replayed"
    )
    ap.add_argument("--profile", action="store_true", help="kernel time by kind over a 3-step call (CUDA)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {VARIANTS}")
    if args.tiny:
        device, dtype, spec, vocab = torch.device("cpu"), torch.float32, TinySpec(), None
        args.layers, args.size = spec.layers, min(args.size, 64)
        args.backend = args.backend or "aot_eager"
    else:
        device, dtype, vocab = torch.device("cuda"), torch.bfloat16, FULL_VOCAB
        spec = dataclasses.replace(FULL, layers=args.layers)
    cfg = torch._dynamo.config
    setattr(cfg, "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit", 64)
    t = time.perf_counter()
    model, tok = build_model(spec, device, dtype, vocab)
    if args.fp8:
        from core.fp8 import convert_to_fp8

        convert_to_fp8(model, matmul="scaled")
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, {args.layers} layers, "
        f"{dtype}{' + fp8 linears' if args.fp8 else ''}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, built in "
        f"{time.perf_counter() - t:.1f} s; torch {torch.__version__}",
        flush=True,
    )
    prompts = (prompt_of_tokens(tok, args.prompt_tokens), prompt_of_tokens(tok, args.prompt_tokens // 2))
    rows, floor, eager_z = [], None, {}
    if args.compare:
        kw = dict(width=args.size, height=args.size, guidance=GUIDANCE, steps=args.steps, return_latents=True)
        spec7 = [ImageSpec(prompts[0], " ", 7)]
        a = eager_z["eager"] = Sampler(model, tok, preview_every=0).sample(spec7, **kw).float().cpu()
        b = Sampler(model, tok, preview_every=0, cfg_batch=False).sample(spec7, **kw).float().cpu()
        floor = rel(b, a)
        print(f"noise floor (eager CFG batched vs two calls): {floor:.2e}", flush=True)
    for v in variants:
        if args.until and time.time() > args.until:
            print(f"{v}: skipped (time)", flush=True)
            continue
        try:
            r = run_variant(v, model, tok, prompts, args, device)
        except Exception:  # noqa: BLE001 - report and go on with the next variant
            traceback.print_exc()
            continue
        z = r.pop("latents")
        if v in ("eager", "eager-slots"):
            eager_z[v] = z  # the reference of the variants with the same LoRA state (none / LoRA a in slots)
        with_lora = ("slots" in v or "merged" in v) and not v.endswith("-off")
        ref = eager_z.get("eager-slots" if with_lora else "eager")
        if ref is not None:
            r["rel_vs_eager"] = rel(z, ref)
        rows.append(r)
        print(json.dumps(r), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"floor": floor, "rows": rows}, indent=2))
    for r in rows:
        prof = r.get("profile")
        if prof:
            print(
                f"\nprofile {r['variant']}: 3 steps, wall {prof['wall_ms']:.0f} ms, GPU busy {prof['busy_ms']:.0f} ms"
            )
            print("  " + ", ".join(f"{k} {v:.1f} ms" for k, v in prof["kinds_ms"].items()))
            for ms, n, name in prof["top"]:
                print(f"  {ms:8.2f} ms {n:5d}x {name}")
    print(
        f"\nfull width{' fp8' if args.fp8 else ''}, {args.layers} layers, {args.size}^2, {args.steps} steps, CFG {GUIDANCE}, one image; "
        f"noise floor {floor if floor is None else f'{floor:.2e}'}"
    )
    print(
        "| variant | first call s | graphs: first / +length / +switch | switch ms | ms/step | s/image | "
        "est. s/image at 36 layers | rel. diff vs eager | peak GiB | kept graph replays |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:

        def f(k, fmt="{:.2f}"):
            return fmt.format(r[k]) if r.get(k) is not None else "-"

        print(
            f"| {r['variant']} | {f('first_call_s', '{:.1f}')} | {r['graphs_first']} / "
            f"{r['graphs_after_length']} / {r.get('graphs_after_switch', '-')} | {f('switch_ms', '{:.1f}')} | "
            f"{f('ms_step', '{:.1f}')} | {f('s_image')} | {f('est_s_36')} | {f('rel_vs_eager', '{:.1e}')} | "
            f"{f('peak_gib', '{:.1f}')} | {r['kept_graph_hits']} |"
            + (f" failed: {r['compile_failed'][:80]}" if r["compile_failed"] else "")
        )
    return rows


if __name__ == "__main__":
    main()
