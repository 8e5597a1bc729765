"""fp8 vs bf16 base at full HiDream-O1 size on one GPU (issue 15): quality, generation, training, memory.

    python bench/bench_fp8.py --budget 190 --out $OUT       # one H200, one call: phases run while time is left
    python bench/bench_fp8.py --tiny --out /tmp/fp8         # CPU dry run of every code path (tiny model, 64 px)

Random weights (core.fullsize.random_tensor's rule, the same seed for every build) built on the GPU the way
core.loading builds a checkpoint: on meta, then one tensor at a time, the fp8 base quantised as each weight is
placed (core.fullsize.random_model); so "peak" includes the build, like loading. Phases, in order, each run
only if the time left looks enough (a phase that is skipped says so):

  quality   one forward at 1024^2 (sigma 0.5 and 0.9): x_pred of the bf16 base, of the fp8 base (scaled fp8
            matmuls) and of fp8 weight-only, each against a float32 copy of the same bf16 weights (TF32 off):
            relative error ||x - x32|| / ||x32|| over the image tokens
  gen-P     core.sampler at 1024^2, 50 steps, CFG 5 ("full" preset), one image: eager, then the compiled
            decoder layer (compile_scope "layers", the worker's); s/image, peak GiB over build + sampling
  train-P   core.train.Trainer at 1024^2, batch 1, LoRA r16, gradient checkpointing on: eager steps, then the
            compiled decoder layers; s/step (median of timed steps), peak GiB over build + steps
  offload   the fp8 trainer / sampler with --offload_blocks layers streamed from pinned host memory
  caps      fp8 training (and with offload) under torch.cuda.set_per_process_memory_fraction caps of 12 / 10 GiB
  gen-caps  fp8 generation, compiled decoder layer, one 50-step CFG image under caps that mimic cards: 1024^2 in
            12 GiB, 2048^2 in 16 GiB (s/image and peak; 2048^2 fp8 is issue 15's "<= 7 s")

Every result is printed as it comes (a line starting with "RESULT") and written to OUT/bench_fp8.json; the
markdown table is printed last.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.fp8 import convert_to_fp8, fp8_linears, fp8_matmul_supported  # noqa: E402
from core.fullsize import CORPUS, FULL_SPEC, FULL_VOCAB, full_config, random_model  # noqa: E402
from core.layout import build_t2i, collate  # noqa: E402
from core.loading import set_token_ids  # noqa: E402
from core.tiny import TinySpec, build_tokenizer  # noqa: E402

GIB = 2**30
PROMPT = (
    "a quiet harbour town at dusk painted in loose watercolour washes, small boats resting on calm water that "
    "reflects warm orange lamps, narrow houses with blue shutters climbing a hill"
)
T0 = time.perf_counter()


class Run:
    def __init__(self, args):
        self.a = args
        self.tiny = args.tiny
        self.device = torch.device("cpu" if args.tiny else "cuda")
        self.cuda = self.device.type == "cuda"
        # the budget counts from the shell's launch time when given (imports take seconds before T0)
        self.deadline = T0 + args.budget - (time.time() - args.launched if args.launched else 0.0)
        self.size = 64 if args.tiny else 1024
        self.gen_steps = 4 if args.tiny else 50
        self.results: dict = {"rows": [], "skipped": [], "errors": []}
        self.out = Path(args.out) if args.out else None
        self.tok = build_tokenizer(CORPUS, vocab_size=2048) if not args.tiny else build_tokenizer()
        spec = TinySpec(hidden=64, layers=4, heads=4, kv_heads=2, head_dim=16, mlp=128) if args.tiny else FULL_SPEC
        self.cfg = full_config(self.tok, spec, None if args.tiny else FULL_VOCAB)
        # the CPU dry run goes through the scaled fp8 path too (the CPU build of torch has a _scaled_mm)
        self.fp8_matmul = "scaled" if args.tiny else "auto"
        self.backend = "aot_eager" if args.tiny else "inductor"

    # -- bookkeeping -------------------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def fits(self, name: str, seconds: float) -> bool:
        if self.left() >= seconds:
            return True
        self.results["skipped"].append(f"{name} (needs ~{seconds:.0f} s, {self.left():.0f} s left)")
        print(f"SKIP {name}: needs ~{seconds:.0f} s, {self.left():.0f} s left", flush=True)
        return False

    def record(self, **row) -> None:
        row["t"] = round(time.perf_counter() - T0, 1)
        self.results["rows"].append(row)
        print("RESULT " + json.dumps(row), flush=True)
        self.save()

    def save(self) -> None:
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "bench_fp8.json").write_text(json.dumps(self.results, indent=1))

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def free(self) -> None:
        torch._dynamo.reset()  # compiled graphs hold the previous model's tensors
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> float:
        return torch.cuda.max_memory_allocated() / GIB if self.cuda else float("nan")

    def allocated(self) -> float:
        return torch.cuda.memory_allocated() / GIB if self.cuda else float("nan")

    def build(self, precision: str, offload: int = 0):
        t = time.perf_counter()
        model = random_model(
            self.cfg,
            dtype=torch.bfloat16,
            device=self.device,
            base_precision=precision,
            fp8_matmul=self.fp8_matmul,
            offload_blocks=offload,
        )
        set_token_ids(model, self.tok)
        self.sync()
        return model, time.perf_counter() - t

    def cap_memory(self, cap_gib: float | None) -> None:
        """Limit this process's GPU memory to cap_gib (a smaller card), or lift the limit (None); no-op on a CPU.
        (The device needs an index: torch refuses a bare "cuda" here, which cost the 2026-12-01 run its caps.)"""
        if self.cuda:
            total = torch.cuda.get_device_properties(self.device).total_memory
            fraction = 1.0 if cap_gib is None else cap_gib * GIB / total
            torch.cuda.set_per_process_memory_fraction(fraction, torch.cuda.current_device())

    def guarded(self, name: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # an OOM or a compile failure is a result too; the next phase still runs
            traceback.print_exc()
            msg = f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            self.results["errors"].append(msg)
            print("ERROR " + msg, flush=True)
            self.save()
        finally:
            self.free()

    # -- phases ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def quality(self) -> None:
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference is float32 for real
        model, _ = self.build("bf16")
        batch = collate([build_t2i(self.tok, PROMPT, self.size, self.size)]).to(self.device)
        n = batch.n_image
        g = torch.Generator(self.device).manual_seed(0)
        x0 = torch.rand(1, n, 3072, generator=g, device=self.device) * 2 - 1
        eps = torch.randn(1, n, 3072, generator=g, device=self.device)
        sigmas = (0.5, 0.9)

        def xpred(m, autocast: bool) -> dict:
            out = {}
            for s in sigmas:
                z = (1 - s) * x0 + s * eps
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast, cache_enabled=False):
                    x = m(**batch.model_inputs(z.to(m.dtype), 1 - s)).x_pred[:, -n:]
                out[s] = x.float()
            return out

        ref_model = copy.deepcopy(model).float()  # the same (bf16-rounded) weights in float32
        ref = xpred(ref_model, False)
        del ref_model
        gc.collect()
        got = {"bf16": xpred(model, True)}
        convert_to_fp8(model, self.fp8_matmul)
        got["fp8"] = xpred(model, True)
        scaled = sum(m.scaled_mm for m in fp8_linears(model).values())
        for m in fp8_linears(model).values():
            m.scaled_mm = False
        got["fp8-weight-only"] = xpred(model, True)
        del model
        for name, xs in got.items():
            errs = {s: float((xs[s] - ref[s]).norm() / ref[s].norm()) for s in sigmas}
            self.record(
                phase="quality",
                base=name,
                rel_err_sigma_0_5=round(errs[0.5], 5),
                rel_err_sigma_0_9=round(errs[0.9], 5),
                fp8_scaled_linears=scaled if name == "fp8" else None,
            )
        torch.backends.cuda.matmul.allow_tf32 = True

    @torch.no_grad()
    def generation(self, precision: str, compile_too: bool) -> None:
        from core.sampler import Sampler

        model, build_s = self.build(precision)
        weights = self.allocated()
        build_peak = self.peak()
        kw = dict(width=self.size, height=self.size, guidance=5.0, seed=0, preset="full", return_latents=True)

        def image_s(sampler, reps: int) -> list[float]:
            times = []
            for _ in range(reps):
                self.sync()
                t = time.perf_counter()
                sampler(PROMPT, steps=self.gen_steps, **kw)
                self.sync()
                times.append(time.perf_counter() - t)
            return times

        eager = Sampler(model, self.tok, preview_every=0)
        eager(PROMPT, steps=2, **kw)  # warm-up (kernels, allocator)
        t_eager = image_s(eager, 1)
        self.record(
            phase="generation",
            base=precision,
            compiled=False,
            s_per_image=round(min(t_eager), 3),
            peak_gib=round(self.peak(), 2),
            build_peak_gib=round(build_peak, 2),
            weights_gib=round(weights, 2),
            build_s=round(build_s, 1),
        )
        if not compile_too or not self.fits(f"gen-{precision} compiled", 25 + 2 * min(t_eager)):
            return
        sampler = Sampler(
            model, self.tok, preview_every=0, compile=self.backend, compile_scope="layers"
        )  # the worker's: one compiled decoder layer
        t = time.perf_counter()
        sampler(PROMPT, steps=2, **kw)
        self.sync()
        compile_s = time.perf_counter() - t
        reps = 2 if self.left() > 20 + 2 * min(t_eager) else 1
        t_comp = image_s(sampler, reps)
        self.record(
            phase="generation",
            base=precision,
            compiled=True,
            s_per_image=round(min(t_comp), 3),
            all_s=[round(x, 3) for x in t_comp],
            peak_gib=round(self.peak(), 2),
            compile_s=round(compile_s, 1),
            compile_failed=sampler.compile_failed,
        )

    def training(self, precision: str, compile_too: bool, offload: int, reserve: float = 0.0) -> None:
        """reserve: seconds kept for later phases before the compiled steps are tried."""
        from core.train.data import Prefetch

        model, build_s = self.build(precision)
        build_peak = self.peak()
        with tempfile.TemporaryDirectory() as tmp:
            trainer = bench_trainer(model, self.tok, tmp, self.size, self.device, precision)
            batches = Prefetch(iter(trainer.data), 2)
            try:
                self._timed_steps(trainer, batches, precision, "eager", build_peak, build_s, warmup=2, steps=5)
                if compile_too and self.fits(f"train-{precision} compiled", 45 + reserve):
                    trainer.model.compile_layers(self.backend)
                    try:
                        self._timed_steps(trainer, batches, precision, "compiled", None, None, warmup=3, steps=6)
                    except Exception as e:  # a compile failure: reported, and the offload steps still run eagerly
                        traceback.print_exc()
                        self.results["errors"].append(f"train-{precision} compiled: {type(e).__name__}: {e}"[:300])
                        trainer.model.eager_layers()
                        torch._dynamo.reset()
                if offload and self.fits(f"train-{precision} offload {offload}", 15 + reserve):
                    from core.offload import BlockOffload

                    off = BlockOffload(trainer.model, offload, self.device)
                    gc.collect()
                    if self.cuda:
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                    how = f"offload {len(off.indices)}" + (" + compiled" if trainer.model.layers_compiled else "")
                    self._timed_steps(trainer, batches, precision, how, None, None, warmup=2, steps=4)
                    demand = sum(1 for e in off.events if e[0] == "fetch" and e[2] == "demand")
                    self.results["rows"][-1]["offload_demand_fetches"] = demand
                    self.results["rows"][-1]["offload_host_gib"] = round(off.host_bytes / GIB, 2)
                    self.save()
            finally:
                batches.close()
                del trainer, model, batches

    def _timed_steps(self, trainer, batches, precision, how, build_peak, build_s, warmup: int, steps: int) -> None:
        t = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step(batches)
        self.sync()
        warm_s = time.perf_counter() - t
        times, last = [], None
        for _ in range(steps):
            t = time.perf_counter()
            last = trainer.train_step(batches)
            self.sync()
            times.append(time.perf_counter() - t)
        self.record(
            phase="training",
            base=precision,
            how=how,
            s_per_step=round(statistics.median(times), 4),
            peak_gib=round(self.peak(), 2),
            build_peak_gib=None if build_peak is None else round(build_peak, 2),
            build_s=None if build_s is None else round(build_s, 1),
            warmup_s=round(warm_s, 1),
            loss=round(float(last), 4),
        )

    @torch.no_grad()
    def generation_offload(self, offload: int) -> None:
        """fp8 sampling with `offload` layers streamed; built with them on the host from the first tensor."""
        from core.offload import block_offload
        from core.sampler import Sampler

        model, _ = self.build("fp8", offload)
        off = block_offload(model)
        kw = dict(width=self.size, height=self.size, guidance=5.0, seed=0, preset="full", return_latents=True)
        sampler = Sampler(model, self.tok, preview_every=0)
        sampler(PROMPT, steps=2, **kw)
        self.sync()
        t = time.perf_counter()
        sampler(PROMPT, steps=self.gen_steps, **kw)
        self.sync()
        demand = sum(1 for e in off.events if e[0] == "fetch" and e[2] == "demand")
        self.record(
            phase="generation",
            base="fp8",
            compiled=False,
            offload=len(off.indices),
            s_per_image=round(time.perf_counter() - t, 3),
            peak_gib=round(self.peak(), 2),
            host_gib=round(off.host_bytes / GIB, 2),
            demand_fetches=demand,
        )

    def capped_training(self, cap_gib: float, offload: int) -> None:
        """fp8 training under a memory cap that mimics a smaller card, from the build on (offloaded layers go to
        the host as they are placed, as core.loading does): 1 + 2 steps, or an out-of-memory error."""
        from core.train.data import Prefetch

        before, error = len(self.results["rows"]), None
        try:
            self.cap_memory(cap_gib)
            model, _ = self.build("fp8", offload)
            with tempfile.TemporaryDirectory() as tmp:
                trainer = bench_trainer(
                    model, self.tok, tmp, self.size, self.device, "fp8", offload_blocks=offload
                )
                batches = Prefetch(iter(trainer.data), 2)
                try:
                    self._timed_steps(
                        trainer, batches, "fp8", f"offload {offload}, cap {cap_gib:g} GiB", None, None, 1, 2
                    )
                finally:
                    batches.close()
                    del trainer, batches
            del model
        except torch.OutOfMemoryError as e:
            error = str(e).splitlines()[0][:160]
        finally:
            self.cap_memory(None)
        self.record(
            phase="cap", cap_gib=cap_gib, offload=offload, fits=len(self.results["rows"]) > before, error=error
        )

    @torch.no_grad()
    def capped_generation(self, cap_gib: float, size: int) -> None:
        """fp8 generation under a memory cap from the build on: compiled layer, a 2-step call, one timed image."""
        from core.sampler import Sampler

        size = 64 if self.tiny else size
        kw = dict(width=size, height=size, guidance=5.0, seed=0, preset="full", return_latents=True)
        error, s_image = None, None
        try:
            self.cap_memory(cap_gib)
            model, _ = self.build("fp8")
            sampler = Sampler(model, self.tok, preview_every=0, compile=self.backend, compile_scope="layers")
            sampler(PROMPT, steps=2, **kw)
            self.sync()
            t = time.perf_counter()
            sampler(PROMPT, steps=self.gen_steps, **kw)
            self.sync()
            s_image = round(time.perf_counter() - t, 3)
            del sampler, model
        except torch.OutOfMemoryError as e:
            error = str(e).splitlines()[0][:160]
        finally:
            self.cap_memory(None)
        self.record(
            phase="gen-cap",
            cap_gib=cap_gib,
            size=size,
            fits=error is None,
            s_per_image=s_image,
            peak_gib=round(self.peak(), 2),
            error=error,
        )


def random_stream(resolution: int):
    """Random images and one fixed caption (bench/bench_training.py's stream)."""

    def make(start: int):
        i = start
        while True:
            g = torch.Generator().manual_seed(i)
            yield torch.rand(3, resolution, resolution, generator=g) * 2 - 1, PROMPT
            i += 1

    return make


def bench_trainer(model, tok, out_dir, size: int, device, base_precision: str, precision: str = "bf16", **more):
    """core.train.Trainer on a prebuilt random model fed random_stream images: rank 16 at 1e-4, gradient
    checkpointing, layers eager (the caller compiles them), no checkpoints, previews or validation; `more`: other
    TrainConfig fields (offload_blocks, cuda_graphs)."""
    from core.train.data import StreamData
    from core.train.trainer import TrainConfig, Trainer

    cfg = TrainConfig(
        model_path="<random>",
        out_dir=out_dir,
        resolution=size,
        steps=10**6,
        rank=16,
        alpha=16.0,
        lr=1e-4,
        device=str(device),
        precision=precision,
        base_precision=base_precision,
        gradient_checkpointing=True,
        compile=False,
        checkpoint_every=0,
        sample_every=0,
        validation_fraction=0.0,
        **more,
    )
    return Trainer(cfg, data=StreamData(random_stream(size), 1), model=model, tokenizer=tok)


def table(results: dict) -> str:
    lines = ["| phase | base | how | s/image or s/step | peak GiB | notes |", "|---|---|---|---:|---:|---|"]
    for r in results["rows"]:
        if r["phase"] == "quality":
            lines.append(
                f"| x_pred vs fp32 | {r['base']} | 1 forward | - | - | rel err {r['rel_err_sigma_0_5']} "
                f"(sigma 0.5), {r['rel_err_sigma_0_9']} (0.9) |"
            )
        elif r["phase"] == "generation":
            how = ("compiled" if r["compiled"] else "eager") + (
                f", offload {r['offload']}" if r.get("offload") else ""
            )
            notes = ", ".join(
                f"{k} {r[k]}" for k in ("build_peak_gib", "weights_gib", "compile_s", "host_gib") if r.get(k)
            )
            lines.append(f"| generation | {r['base']} | {how} | {r['s_per_image']} | {r['peak_gib']} | {notes} |")
        elif r["phase"] == "training":
            notes = ", ".join(
                f"{k} {r[k]}" for k in ("build_peak_gib", "warmup_s", "offload_host_gib", "loss") if r.get(k)
            )
            lines.append(
                f"| training | {r['base']} | {r['how']} | {r['s_per_step']} | {r['peak_gib']} | {notes} |"
            )
        elif r["phase"] == "cap":
            lines.append(f"| cap {r['cap_gib']} GiB | fp8 | offload {r['offload']} | - | - | fits: {r['fits']} |")
        elif r["phase"] == "gen-cap":
            lines.append(
                f"| gen cap {r['cap_gib']} GiB, {r['size']}^2 | fp8 | compiled | {r['s_per_image']} s/image | "
                f"{r['peak_gib']} | fits: {r['fits']} |"
            )
    for s in results["skipped"]:
        lines.append(f"| skipped | | | | | {s} |")
    for e in results["errors"]:
        lines.append(f"| error | | | | | {e} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--budget", type=float, default=190.0, help="seconds from start; later phases are skipped")
    ap.add_argument("--launched", type=float, default=None, help="`date +%%s.%%N` when the command started")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--offload", type=int, default=12, help="layers offloaded in the offload phases")
    ap.add_argument("--phases", default="quality,gen,train,offload,caps")
    a = ap.parse_args(argv)
    run = Run(a)
    phases = a.phases.split(",")
    if run.cuda:
        cap = torch.cuda.get_device_capability()
        run.results["device"] = (
            f"{torch.cuda.get_device_name()} (capability {cap[0]}.{cap[1]}), torch {torch.__version__}, "
            f"fp8 matmuls: {fp8_matmul_supported(run.device)}"
        )
        torch.backends.cuda.matmul.allow_tf32 = True
        print(run.results["device"], flush=True)
    print(f"start {time.perf_counter() - T0:.1f} s after launch", flush=True)
    if "quality" in phases and run.fits("quality", 15):
        run.guarded("quality", run.quality)
    if "gen" in phases:
        for precision in ("bf16", "fp8"):
            if run.fits(f"gen-{precision}", 12):
                run.guarded(f"gen-{precision}", run.generation, precision, True)
    if "train" in phases:
        # fp8 first: its compiled and offloaded steps are new; bf16's compiled step was measured before
        # (bench/RESULTS.md), so its eager steps keep ~12 s in reserve and its compiled ones come last
        for precision in ("fp8", "bf16"):
            if run.fits(f"train-{precision}", 15):
                offload = a.offload if (precision == "fp8" and "offload" in phases) else 0
                reserve = 12.0 if precision == "fp8" else 0.0
                run.guarded(f"train-{precision}", run.training, precision, True, offload, reserve)
    if "offload" in phases and run.fits("gen-fp8 offload", 15):
        run.guarded("gen-fp8 offload", run.generation_offload, a.offload)
    if "caps" in phases:
        # 12 GiB: a 12 GB card (the offload target); 10 GiB: below the fp8 peak, where offload must help
        for cap_gib, offload in ((12.0, 0), (10.0, 0), (10.0, a.offload)):
            if run.fits(f"cap {cap_gib:g} GiB offload {offload}", 14):
                run.guarded(f"cap {cap_gib:g}", run.capped_training, cap_gib, offload)
    if "gen-caps" in phases:
        for cap_gib, size in ((12.0, 1024), (16.0, 2048)):
            if run.fits(f"gen cap {cap_gib:g} GiB {size}", 30 if size == 1024 else 45):
                run.guarded(f"gen cap {cap_gib:g}", run.capped_generation, cap_gib, size)
    run.results["seconds"] = round(time.perf_counter() - T0, 1)
    run.save()
    print("\n" + table(run.results), flush=True)


if __name__ == "__main__":
    main()
