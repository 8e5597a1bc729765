"""Where a full-size fp8 training step's memory goes, eager vs compiled vs CUDA graphs (issue 15).

    TORCH_LOGS=graph_breaks python bench/probe_fp8_train_memory.py --out $OUT          # one H200, ~3 min
    python bench/probe_fp8_train_memory.py --tiny                                      # CPU dry run

The compiled fp8 layer peaked 2.6 GiB over the eager one at 1024^2 (bench/RESULTS.md, issue 15), ~70 MB per
compiled layer, and a CPU count of the saved tensors on a tiny model showed nothing. This probe builds the
random full-size fp8 model as core.loading would, trains with core.train.Trainer (1024^2, batch 1, r16,
gradient checkpointing), and for each way of running the decoder layers measures:
  saved      memory still allocated after the forward (the loss), before the backward: what the step keeps
             for its backward (with checkpointing: each layer's input, and whatever else is held)
  peak       torch.cuda.max_memory_allocated over warm steps (weights included), and the build's peak;
             max_memory_reserved too: a replayed CUDA graph allocates nothing, its memory pool is reserved
  s/step     median of timed steps
(compiled / graphs: the layer's checkpoint recomputes every op, core.model.run_layer_recomputed, the
default; "-partitioner": the partitioner's own choice, as before), and lists the allocations of one forward that were still alive at its end, grouped by where they were made
(torch.cuda.memory._record_memory_history), so the extra has a name.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_fp8 import bench_trainer  # noqa: E402
from core.fullsize import CORPUS, FULL_SPEC, FULL_VOCAB, full_config, random_model  # noqa: E402
from core.loading import set_token_ids  # noqa: E402
from core.tiny import TinySpec, build_tokenizer  # noqa: E402

GIB, MIB = 2**30, 2**20
SKIP = ("torch/cuda/memory", "torch/utils/_", "torch/_ops.py", "torch/autograd/function.py")


def where(frames: list[dict]) -> str:
    """The innermost frames of an allocation that say who made it (up to three, innermost first)."""
    out = []
    for f in frames:
        name = f.get("filename", "")
        if not name or name.startswith("??") or any(s in name for s in SKIP):
            continue
        short = "/".join(name.split("/")[-2:])
        out.append(f"{short}:{f.get('line')}:{f.get('name')}")
        if len(out) == 3:
            break
    return " < ".join(out) or "(no python frame)"


def alive_at_end(trace: list[dict]) -> dict[str, list[int]]:
    """Allocations of `trace` (one forward's events) not freed within it, grouped by where()."""
    live: dict[int, dict] = {}
    for e in trace:
        if e["action"] == "alloc":
            live[e["addr"]] = e
        elif e["action"] in ("free_requested", "free_completed"):
            live.pop(e["addr"], None)
    groups: dict[str, list[int]] = defaultdict(list)
    for e in live.values():
        groups[where(e.get("frames", []))].append(e["size"])
    return groups


class Probe:
    def __init__(self, tiny: bool):
        self.tiny = tiny
        self.device = torch.device("cpu" if tiny else "cuda")
        self.cuda = not tiny
        self.size = 64 if tiny else 1024
        self.tok = build_tokenizer() if tiny else build_tokenizer(CORPUS, vocab_size=2048)
        spec = TinySpec(hidden=64, layers=4, heads=4, kv_heads=2, head_dim=16, mlp=128) if tiny else FULL_SPEC
        self.cfg = full_config(self.tok, spec, None if tiny else FULL_VOCAB)
        self.rows: list[dict] = []

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def allocated(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else 0

    def run(self, modes: list[str], steps: int) -> None:
        from core.train.data import Prefetch

        t = time.perf_counter()
        model = random_model(
            self.cfg,
            dtype=torch.bfloat16,
            device=self.device,
            base_precision="fp8",
            fp8_matmul="scaled" if self.tiny else "auto",
        )
        set_token_ids(model, self.tok)
        self.sync()
        build = dict(build_s=round(time.perf_counter() - t, 1))
        if self.cuda:
            build["build_peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
            build["weights_gib"] = round(self.allocated() / GIB, 2)
        self.rows.append({"mode": "build", **build})
        print(json.dumps(self.rows[-1]), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            precision = "fp32" if self.tiny else "bf16"
            trainer = bench_trainer(
                model, self.tok, tmp, self.size, self.device, "fp8", precision, cuda_graphs=False
            )
            batches = Prefetch(iter(trainer.data), 2)
            backend = "aot_eager" if self.tiny else "inductor"
            try:
                for mode in modes:
                    if mode == "eager":
                        trainer.model.eager_layers()
                        trainer.cuda_graphs = False
                    elif mode in ("compiled", "compiled-partitioner"):
                        torch._dynamo.reset()
                        trainer.model.compile_layers(backend, recompute_all=mode == "compiled")
                        trainer.cuda_graphs = False
                    elif mode in ("graphs", "graphs-partitioner"):
                        torch._dynamo.reset()
                        trainer.model.compile_layers(
                            backend, mode="reduce-overhead", recompute_all=mode == "graphs"
                        )
                        trainer.cuda_graphs = True
                    self.measure(mode, trainer, batches, steps)
            finally:
                batches.close()

    def measure(self, mode: str, trainer, batches, steps: int) -> None:
        t = time.perf_counter()
        for _ in range(3):
            trainer.train_step(batches)
        self.sync()
        warm_s = time.perf_counter() - t
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            trainer.train_step(batches)
            self.sync()
            times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() if self.cuda else 0
        # replayed CUDA graphs allocate nothing: their private pools show only in the reserved memory
        reserved = torch.cuda.max_memory_reserved() if self.cuda else 0
        # one forward with the allocator's history on: what is alive when the loss exists
        images, captions, *_ = next(batches)
        trainer.optimizer.zero_grad(set_to_none=True)
        if trainer.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        self.sync()
        before = self.allocated()
        groups = {}
        if self.cuda:
            torch.cuda.memory._record_memory_history(max_entries=500_000, stacks="python")
        loss = trainer.loss(images, captions)
        self.sync()
        saved = self.allocated() - before
        if self.cuda:
            trace = torch.cuda.memory._snapshot()["device_traces"][0]
            torch.cuda.memory._record_memory_history(enabled=None)
            groups = alive_at_end(trace)
        loss.backward()
        trainer.optimizer.zero_grad(set_to_none=True)
        del loss
        top = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:12]
        row = dict(
            mode=mode,
            s_per_step=round(statistics.median(times), 4),
            warmup_s=round(warm_s, 1),
            peak_gib=round(peak / GIB, 2),
            reserved_gib=round(reserved / GIB, 2),
            saved_by_forward_mib=round(saved / MIB, 1),
            alive_after_forward=[
                dict(
                    where=w,
                    mib=round(sum(s) / MIB, 1),
                    count=len(s),
                    sizes_mib=sorted({round(x / MIB, 2) for x in s})[:6],
                )
                for w, s in top
            ],
        )
        self.rows.append(row)
        print(json.dumps(row, indent=1), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--modes", default="eager,compiled-partitioner,compiled,graphs")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    p = Probe(a.tiny)
    if p.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    p.run(a.modes.split(","), a.steps)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "probe_fp8_train_memory.json").write_text(json.dumps(p.rows, indent=1))
    print("\n| mode | s/step | peak allocated GiB | peak reserved GiB | kept by the forward, MiB |")
    print("|---|---:|---:|---:|---:|")
    for r in p.rows[1:]:
        print(
            f"| {r['mode']} | {r['s_per_step']} | {r['peak_gib']} | {r['reserved_gib']} | {r['saved_by_forward_mib']} |"
        )
    print(f"build: {p.rows[0]}")


if __name__ == "__main__":
    main()
