"""Sampling speed at full HiDream-O1 size: the official way vs ours (prefix cache + CFG batch + split SDPA).

    python bench/bench_sampling.py                        # GPU: 1024x1024 and 2048x2048, bf16, random weights
    python bench/bench_sampling.py --compile --cuda-graph # also try torch.compile / CUDA graphs of our step
    python bench/bench_sampling.py --tiny                 # the same code on the CPU at a tiny shape (a check)

Per denoising step with CFG (guidance 5):
  official  two full forwards (cond, uncond) through model.reference_forward: prompt + image tokens,
            dense additive [B, 1, S, S] mask, nothing cached (what the official pipeline does);
  ours      model.denoise over the image tokens only, cond and uncond rows in one batch, text K/V from
            model.encode_prefix computed once, attention as SDPA calls without an S x S mask.
Both run under the same autocast as core.sampler. x_pred of the two is compared (bf16: the difference
is set against the noise floor official-vs-official-split, i.e. model.forward without cache).
Then seconds per 50-step image (preset "full") through core.sampler, ours and the official loop.
The weights are random (speed does not depend on them) and built directly on the device in bf16:
the model is constructed on the meta device and materialised on the GPU, never on the CPU at full size.
The last thing printed is a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from core.layout import build_t2i, collate  # noqa: E402
from core.loading import set_token_ids  # noqa: E402
from core.model import HiDreamO1  # noqa: E402
from core.sampler import Sampler  # noqa: E402
from core.tiny import TinySpec, build_tokenizer, tiny_config  # noqa: E402

# The real text tower; the vision tower is kept small because text-to-image never runs it.
FULL = TinySpec(
    hidden=4096,
    layers=36,
    heads=32,
    kv_heads=8,
    head_dim=128,
    mlp=12288,
    vision_hidden=64,
    vision_depth=1,
    vision_heads=1,
    vision_mlp=128,
    deepstack=(0,),
)
FULL_VOCAB = 151936
GUIDANCE = 5.0
WORDS = (
    "a photograph of a small red fox sitting in fresh white snow under tall dark pine trees at dawn , "
    "soft golden light , sharp focus on the eyes , shallow depth of field , muted blue shadows"
).split()


# ----------------------------------------------------------------------------- model
def build_model(spec: TinySpec, device: torch.device, dtype: torch.dtype, vocab: int | None, seed: int = 0):
    """Random HiDreamO1 + tokenizer; parameters allocated and initialised on `device` only."""
    tok = build_tokenizer()
    cfg = tiny_config(spec, tok)
    if vocab:
        cfg.text_config.vocab_size = vocab
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # so that to_empty allocates bf16 directly (no float32 copy on the GPU)
    try:
        with torch.device("meta"):
            model = HiDreamO1(cfg)
    finally:
        torch.set_default_dtype(default)
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    n_layers = cfg.text_config.num_hidden_layers
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norms ~1, biases ~0
                p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
            elif "embed_tokens" in name:
                p.normal_(0.0, 1.0, generator=g)
            else:
                fan_in = p[0].numel()
                # residual writers scaled down so 36 random layers keep the stream O(10) in bf16
                scale = (2 * n_layers) ** -0.5 if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                p.normal_(0.0, scale * fan_in**-0.5, generator=g)
    # to_empty left the rotary buffers uninitialised; marking them stale makes reset_rotary recompute them
    for m in model.modules():
        if hasattr(m, "inv_freq"):
            m.inv_freq = m.inv_freq.to(torch.bfloat16)
    model.reset_rotary()
    set_token_ids(model, tok)
    return model.eval().requires_grad_(False), tok


def prompt_of_tokens(tok, n: int) -> str:
    """A prose prompt whose chat-templated token count is about n (real prompts run 50-300 tokens)."""
    words, i = [], 0
    while len(tok(" ".join(words))["input_ids"]) < n:
        words.append(WORDS[i % len(WORDS)])
        i += 1
    return " ".join(words)


# ----------------------------------------------------------------------------- timing
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def host_ms(fn, device) -> float:
    """Time the host spends issuing fn (no sync at the end): close to the synced time = launch-bound."""
    sync(device)
    t = time.perf_counter()
    fn()
    ms = (time.perf_counter() - t) * 1000
    sync(device)
    return ms


def count_host_syncs(fn, device) -> int | None:
    """How many host<->device synchronisations fn makes (CUDA's sync debug mode), None off CUDA."""
    if device.type != "cuda":
        return None
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean |a - b| / mean |b| over all values (float32)."""
    a, b = a.float(), b.float()
    return float((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12))


# ----------------------------------------------------------------------------- the steps
class Steps:
    """One CFG denoising step of each kind, at one size, on one fixed noisy latent."""

    def __init__(self, model, tok, prompt: str, height: int, width: int, device):
        self.model, self.device = model, device
        self.cond = collate([build_t2i(tok, prompt, height, width)]).to(device)
        self.uncond = collate([build_t2i(tok, " ", height, width)]).to(device)
        self.both = collate([build_t2i(tok, t, height, width) for t in (prompt, " ")]).to(device)
        n = height // 32 * width // 32
        g = torch.Generator(device=device).manual_seed(1)
        self.z = (8.0 * torch.randn(1, n, 3072, generator=g, device=device)).to(model.dtype)
        self.t = torch.tensor([0.3], device=device)  # sigma 0.7
        self.sigma = 0.7
        self.autocast = torch.autocast(
            device.type, dtype=model.dtype, enabled=model.dtype != torch.float32, cache_enabled=False
        )  # as core.sampler (and safe under graph capture)
        self.text_tokens = (self.cond.input_ids.shape[1], self.uncond.input_ids.shape[1])
        self.n = n
        with torch.no_grad(), self.autocast:
            self.prefix = model.encode_prefix(self.both)
            self.prefix_c = model.encode_prefix(self.cond)
            self.prefix_u = model.encode_prefix(self.uncond)

    def _cfg(self, x_c, x_u):
        v_c = (x_c.float() - self.z.float()) / self.sigma
        v_u = (x_u.float() - self.z.float()) / self.sigma
        return v_u + GUIDANCE * (v_c - v_u)

    @torch.no_grad()
    def official_x(self, forward=None):
        forward = forward or self.model.reference_forward
        out = []
        for b in (self.cond, self.uncond):
            with self.autocast:
                x = forward(**b.model_inputs(self.z.clone(), self.t)).x_pred
            out.append(x[0, b.vinput_mask[0]][None])
        return out

    def official(self):
        return self._cfg(*self.official_x())

    @torch.no_grad()
    def ours_x(self, denoise=None):
        denoise = denoise or self.model.denoise
        with self.autocast:
            x = denoise(self.prefix, torch.cat([self.z, self.z]), self.t.expand(2))
        return x.chunk(2)

    def ours(self):
        return self._cfg(*self.ours_x())

    @torch.no_grad()
    def ours_unbatched(self):
        """Variant: cond and uncond as two denoise calls on their own (unpadded, mask-free) prefixes."""
        with self.autocast:
            x_c = self.model.denoise(self.prefix_c, self.z, self.t)
            x_u = self.model.denoise(self.prefix_u, self.z, self.t)
        return self._cfg(x_c, x_u)


def fp32_errors(steps: Steps, tok, prompt: str, size: int, compiled) -> dict:
    """bf16 error of each path against the same weights run in float32 (ours, eager): the honest yardstick
    for "same output", since fused kernels round differently from eager ones without being less exact."""
    import copy

    m32 = copy.deepcopy(steps.model).float()
    s32 = Steps(m32, tok, prompt, size, size, steps.device)
    s32.z = steps.z.float()  # the very same (bf16-rounded) latent
    ref = s32.ours_x()
    errs = {
        "err_official_vs_fp32": max(rel_diff(a, b) for a, b in zip(steps.official_x(), ref)),
        "err_ours_vs_fp32": max(rel_diff(a, b) for a, b in zip(steps.ours_x(), ref)),
        "err_compiled_vs_fp32": max(rel_diff(a, b) for a, b in zip(steps.ours_x(compiled), ref)),
    }
    del m32, s32, ref
    if steps.device.type == "cuda":
        torch.cuda.empty_cache()
    print(
        "x_pred rel error vs float32: official bf16 {err_official_vs_fp32:.2e}, ours bf16 {err_ours_vs_fp32:.2e}, "
        "ours + compile bf16 {err_compiled_vs_fp32:.2e}".format(**errs),
        flush=True,
    )
    return errs


def cuda_graph_step(steps: Steps):
    """Our step captured as a CUDA graph (static z, t and prefix; replay = the whole denoise call)."""
    model = steps.model
    z_in = torch.cat([steps.z, steps.z]).clone()
    t_in = steps.t.expand(2).clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad(), steps.autocast:
        for _ in range(3):
            model.denoise(steps.prefix, z_in, t_in)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad(), steps.autocast:
        out = model.denoise(steps.prefix, z_in, t_in)

    def run():
        z_in.copy_(torch.cat([steps.z, steps.z]))
        graph.replay()
        return steps._cfg(*out.chunk(2))

    return run, out


# ----------------------------------------------------------------------------- main
def bench_size(model, tok, prompt, size, args, device) -> dict:
    r = {"size": size}
    steps = Steps(model, tok, prompt, size, size, device)
    r["text_tokens"], r["image_tokens"] = steps.text_tokens, steps.n
    print(
        f"\n== {size}x{size}: {steps.n} image tokens, text {steps.text_tokens[0]} (cond) / "
        f"{steps.text_tokens[1]} (uncond) tokens",
        flush=True,
    )

    # correctness first: x_pred of ours vs the official dense path, against the noise floor
    x_off = steps.official_x()
    x_ours = steps.ours_x()
    x_split = steps.official_x(steps.model)  # model.forward: split attention, no cache
    r["diff_ours_vs_official"] = max(rel_diff(a, b) for a, b in zip(x_ours, x_off))
    r["diff_floor_split_vs_official"] = max(rel_diff(a, b) for a, b in zip(x_split, x_off))
    r["diff_ours_vs_split"] = max(rel_diff(a, b) for a, b in zip(x_ours, x_split))
    # float32: rounding only; bf16: within 3x the gap between two exact official-equivalent paths
    tol = 1e-5 if model.dtype == torch.float32 else max(3 * r["diff_floor_split_vs_official"], 1e-2)
    r["same_x_pred"] = r["diff_ours_vs_official"] <= tol
    print(
        f"x_pred mean rel diff: ours vs official {r['diff_ours_vs_official']:.2e}, "
        f"noise floor (official split vs dense) {r['diff_floor_split_vs_official']:.2e} -> "
        f"{'OK' if r['same_x_pred'] else 'MISMATCH'}",
        flush=True,
    )
    del x_off, x_ours, x_split

    r["official_ms"] = median_ms(steps.official, device, args.warmup, args.iters)
    print(f"official  {r['official_ms']:.1f} ms/step", flush=True)
    r["ours_ms"] = median_ms(steps.ours, device, args.warmup, args.iters)
    print(f"ours      {r['ours_ms']:.1f} ms/step  ({r['official_ms'] / r['ours_ms']:.2f}x)", flush=True)
    r["ours_unbatched_ms"] = median_ms(steps.ours_unbatched, device, args.warmup, args.iters)
    print(f"ours, CFG as 2 calls (no pad mask) {r['ours_unbatched_ms']:.1f} ms/step", flush=True)
    # diagnostics: host time to issue one step (launch-bound when close to the step time), host syncs
    r["official_host_ms"], r["ours_host_ms"] = host_ms(steps.official, device), host_ms(steps.ours, device)
    r["official_syncs"], r["ours_syncs"] = (
        count_host_syncs(steps.official, device),
        count_host_syncs(steps.ours, device),
    )
    print(
        f"host time to issue a step: official {r['official_host_ms']:.1f} ms, ours {r['ours_host_ms']:.1f} ms; "
        f"host syncs per step: official {r['official_syncs']}, ours {r['ours_syncs']}",
        flush=True,
    )

    if args.cuda_graph and device.type == "cuda":
        try:
            run, _ = cuda_graph_step(steps)
            r["ours_graph_ms"] = median_ms(run, device, args.warmup, args.iters)
            print(f"ours + CUDA graph {r['ours_graph_ms']:.1f} ms/step", flush=True)
        except Exception as e:  # noqa: BLE001 - an optional speed-up; report and go on
            r["ours_graph_error"] = f"{type(e).__name__}: {e}"[:300]
            print(f"CUDA graph failed: {r['ours_graph_error']}", flush=True)
            torch.cuda.synchronize()
    if args.compile:
        try:
            compiled = torch.compile(model.denoise, dynamic=False)
            x_c = steps.ours_x(compiled)  # first call compiles
            r["diff_compiled_vs_ours"] = max(rel_diff(a, b) for a, b in zip(x_c, steps.ours_x()))
            r["ours_compiled_ms"] = median_ms(
                lambda: steps._cfg(*steps.ours_x(compiled)), device, args.warmup, args.iters
            )
            print(
                f"ours + torch.compile {r['ours_compiled_ms']:.1f} ms/step "
                f"(x_pred diff {r['diff_compiled_vs_ours']:.1e})",
                flush=True,
            )
            if args.fp32_check:
                r.update(fp32_errors(steps, tok, prompt, size, compiled))
        except Exception as e:  # noqa: BLE001
            r["ours_compiled_error"] = f"{type(e).__name__}: {e}"[:300]
            print(f"torch.compile failed: {r['ours_compiled_error']}", flush=True)
    steps.prefix = steps.prefix_c = steps.prefix_u = None  # free the K/V before the whole-image runs

    if args.image_steps > 0:
        kw = dict(width=size, height=size, steps=args.image_steps, seed=0, preset="full")

        def image_seconds(s: Sampler) -> float:
            """A 2-step warm-up (which also captures the graph / compiles), then one timed image."""
            s(prompt, **{**kw, "steps": 2})
            sync(device)
            t = time.perf_counter()
            s(prompt, **kw)
            sync(device)
            return time.perf_counter() - t

        sampler = Sampler(model, tok, preview_every=0)
        r["ours_image_s"] = image_seconds(sampler)
        print(f"ours: {r['ours_image_s']:.2f} s per {args.image_steps}-step image", flush=True)
        if args.cuda_graph and device.type == "cuda":
            graphed = Sampler(model, tok, preview_every=0, cuda_graph=True)
            r["ours_graph_image_s"] = image_seconds(graphed)
            print(
                f"ours + CUDA graph: {r['ours_graph_image_s']:.2f} s per {args.image_steps}-step image"
                + (f" (capture failed, ran eager: {graphed.graph_failed})" if graphed.graph_failed else ""),
                flush=True,
            )
        if args.compile:
            r["ours_compiled_image_s"] = image_seconds(Sampler(model, tok, preview_every=0, compile=True))
            print(
                f"ours + compile: {r['ours_compiled_image_s']:.2f} s per {args.image_steps}-step image", flush=True
            )
        if args.official_image:
            t = time.perf_counter()
            sampler.reference(prompt, dense=True, **kw)
            sync(device)
            r["official_image_s"] = time.perf_counter() - t
            print(f"official loop: {r['official_image_s']:.2f} s per {args.image_steps}-step image", flush=True)
    return r


def table(rows: list[dict], args) -> str:
    def f(r, k, fmt="{:.1f}"):
        return fmt.format(r[k]) if k in r else "-"

    head = (
        "| size | text tok (cond/uncond) | official ms/step | ours ms/step | speed-up | ours, 2 CFG calls | "
        "ours + graph | ours + compile | x_pred rel diff (floor) | err vs fp32: official / ours / compiled | "
        "ours s/image | ours + graph s/image | ours + compile s/image | official s/image |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        speed = f"{r['official_ms'] / r['ours_ms']:.2f}x" if "ours_ms" in r else "-"
        lines.append(
            f"| {r['size']}x{r['size']} | {r['text_tokens'][0]}/{r['text_tokens'][1]} | {f(r, 'official_ms')} | "
            f"{f(r, 'ours_ms')} | {speed} | {f(r, 'ours_unbatched_ms')} | {f(r, 'ours_graph_ms')} | "
            f"{f(r, 'ours_compiled_ms')} | "
            f"{r['diff_ours_vs_official']:.1e} ({r['diff_floor_split_vs_official']:.1e}) | "
            f"{f(r, 'err_official_vs_fp32', '{:.1e}')} / {f(r, 'err_ours_vs_fp32', '{:.1e}')} / "
            f"{f(r, 'err_compiled_vs_fp32', '{:.1e}')} | "
            f"{f(r, 'ours_image_s', '{:.2f}')} | {f(r, 'ours_graph_image_s', '{:.2f}')} | "
            f"{f(r, 'ours_compiled_image_s', '{:.2f}')} | "
            f"{f(r, 'official_image_s', '{:.2f}')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU, float32 (checks the code)")
    ap.add_argument("--sizes", type=int, nargs="+", help="square sizes (default 1024 2048; tiny: 64 96)")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="length of the cond prompt in tokens")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--image-steps", type=int, default=50, help="steps of the timed whole image (0: skip)")
    ap.add_argument("--official-image", action="store_true", help="also time a whole image the official way")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(model.denoise)")
    ap.add_argument("--cuda-graph", action="store_true", help="also time our step as a CUDA graph")
    ap.add_argument(
        "--fp32-check",
        action="store_true",
        help="with --compile: error of every bf16 path against a float32 copy of the model",
    )
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    if args.tiny:
        device, dtype, spec, vocab = torch.device("cpu"), torch.float32, TinySpec(), None
        sizes = args.sizes or [64, 96]
    else:
        if not torch.cuda.is_available():
            ap.error("no CUDA device: run with --tiny for the CPU check")
        device, dtype, spec, vocab = torch.device("cuda"), torch.bfloat16, FULL, FULL_VOCAB
        sizes = args.sizes or [1024, 2048]
    if any(s <= 0 or s % 32 for s in sizes):
        ap.error(f"--sizes must be positive multiples of 32, got {sizes}")

    t = time.perf_counter()
    model, tok = build_model(spec, device, dtype, vocab)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {n_params / 1e9:.2f}B parameters, {dtype}, {device} "
        f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
        f"built in {time.perf_counter() - t:.1f} s; torch {torch.__version__}",
        flush=True,
    )
    prompt = prompt_of_tokens(tok, args.prompt_tokens)

    rows = []
    for size in sizes:
        try:
            rows.append(bench_size(model, tok, prompt, size, args, device))
        except Exception:  # noqa: BLE001 - report the size that failed and keep the others
            traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            print(f"peak GPU memory so far {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print()
    print(table(rows, args))
    return rows


if __name__ == "__main__":
    main()
