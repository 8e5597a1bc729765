"""Measure a bundled-model candidate on held-out prompts at the test settings (CPU, float32).

    python bench/eval_bundled.py models/o1-shapes [--lead "in bold outline style"]

Prints background / region / colour / shape rates, the small-shape and large-shape measures, cells filled
that the caption left empty, and the speckle measure (core.synth.speckle), for the 48 single-shape prompts
of stream 999 and the 16 two-shape prompts of stream 1999 that tests/core/test_bundled_model.py uses.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from core.loading import load_model, load_tokenizer
from core.sampler import Sampler
from core.synth import sample_scene
from core.synth.evaluate import evaluate, size_accuracy

SAMPLING = dict(width=128, height=128, steps=20, guidance=3.0, seed=0, preset="full")


def evaluated(sampler, scenes, lead: str, size: int, **sampling) -> dict:
    """core.synth.evaluate of `scenes` drawn at `size` px with SAMPLING, changed by `sampling` (e.g. guidance)."""
    images = sampler([s.caption(lead) for s in scenes], **{**SAMPLING, **sampling, "width": size, "height": size})
    return evaluate(list(zip(images, [s.labels() for s in scenes])))


def measure(sampler, scenes, lead: str, size: int, **sampling) -> dict:
    """The measures of `scenes` (evaluated's means, rounded)."""
    out = evaluated(sampler, scenes, lead, size, **sampling)
    out.pop("rows")
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def measure_more(sampler, a, first: int = 48, call: int = 50) -> dict:
    """Shape-class rates of `a.more` further single-shape prompts, pooled over calls of `call` prompts."""
    scenes = [sample_scene(999, i, two_shape_prob=0.0) for i in range(first, first + a.more)]
    sampling = dict(guidance=a.guidance, steps=a.steps, shift=a.shift)
    rows = [
        row
        for k in range(0, len(scenes), call)
        for row in evaluated(sampler, scenes[k : k + call], a.lead, a.size, **sampling, seed=first + k)["rows"]
    ]
    out = {}
    for size in ("small", "large"):
        out[f"{size}_shapes"] = sum(r["sizes"].count(size) for r in rows)
        out[f"{size}_shape_acc"] = round(size_accuracy(rows, size) or 0.0, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--lead", default="", help="a phrase put in front of every prompt, as a LoRA trigger is")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--guidance", type=float, default=SAMPLING["guidance"])
    ap.add_argument("--steps", type=int, default=SAMPLING["steps"])
    ap.add_argument("--device", default="cpu", help="cuda: a quick look on the GPU machine (float32 too)")
    ap.add_argument("--shift", type=float, help="the flow shift (default: the preset's, 3)")
    ap.add_argument(
        "--more",
        type=int,
        default=0,
        help="also measure this many further single-shape prompts (stream 999 from index 48, in calls of 50 seeded "
        "with their first index): 25 small shapes are too few to tell 0.80 from 0.85",
    )
    a = ap.parse_args()
    torch.manual_seed(0)
    sampler = Sampler(load_model(a.model, torch.float32, a.device), load_tokenizer(a.model))
    t0 = time.time()
    single = [sample_scene(999, i, two_shape_prob=0.0) for i in range(48)]
    double = [sample_scene(1999, i, two_shape_prob=1.0) for i in range(16)]
    print(
        json.dumps(
            {
                "model": a.model,
                "lead": a.lead,
                "size": a.size,
                "guidance": a.guidance,
                "steps": a.steps,
                "shift": a.shift,
                "single": measure(
                    sampler, single, a.lead, a.size, guidance=a.guidance, steps=a.steps, shift=a.shift
                ),
                "double": measure(
                    sampler, double, a.lead, a.size, guidance=a.guidance, steps=a.steps, shift=a.shift
                ),
                **({"more": measure_more(sampler, a)} if a.more else {}),
                "seconds": round(time.time() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
