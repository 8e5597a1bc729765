"""Named training recipes: a starting point for a training request, in the request's own field names.

One table for every front end: the HTTP API applies a preset to the fields a request leaves out (and lists the
table at GET /v1/training-presets), the web page's preset buttons and the `o1lora train --preset` flag read it
from there. "standard" is the recipe's defaults (TrainConfig) and sets nothing.

Imports no torch (the API imports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainingPreset:
    label: str  # what a button says
    summary: str  # one line: what it is for
    values: dict[str, Any] = field(default_factory=dict)  # request field -> value; the rest keep their defaults


TRAINING_PRESETS: dict[str, TrainingPreset] = {
    "quick": TrainingPreset(
        "Quick",
        "a first look at the style: half resolution, a fifth of the steps",
        {
            "steps": 500,
            "rank": 8,
            "alpha": 8.0,
            "learning_rate": 2e-4,
            "resolution": 512,
            "batch_size": 1,
            "sample_every": 100,
            "lr_schedule": "constant",
            "warmup_steps": 0,
        },
    ),
    "standard": TrainingPreset("Standard", "the published recipe: 1024 px, rank 16, 2,500 steps at 1e-4"),
    "high": TrainingPreset(
        "High quality",
        "more capacity, longer, cosine decay",
        {
            "steps": 5000,
            "rank": 32,
            "alpha": 32.0,
            "learning_rate": 1e-4,
            "resolution": 1024,
            "batch_size": 1,
            "sample_every": 500,
            "lr_schedule": "cosine",
            "warmup_steps": 200,
        },
    ),
    # The bundled 15M model (models/o1-shapes) draws at 128-256 px and learns in minutes on a CPU at a learning
    # rate that would wreck an 8B model. Chosen for the first LoRA of `make demo` (docs/evidence.md section 5): at
    # 256 px a shape spans two or more 32-px patches, so a style across it is a patch-level change the LoRA learns
    # (shading +0.42 at 256 px in 150 steps, against +0.32 at 128 px in 300: the same CPU time), and the base
    # model draws its small shapes right there (0.96 of small shapes against 0.64 at 128 px). Batch 8 (batch 2 at
    # 3e-3 learned noise at 128 px, 6e-3 collapsed), 3e-3 decayed by cosine, rank 16. Prior images gate the trigger
    # (+0.00-0.03 without it, where rendered plain twins leaked +0.01-0.08), which leaves room for more steps.
    # On the base after its small-shape sittings, 300 steps gave +0.67 / +0.71 with the trigger and +0.02 / +0.02
    # without in two seeds, where 250 gave +0.66 / +0.55 and +0.04 / +0.01 and 200 leaked +0.06: more steps let the
    # prior images gate the trigger (docs/evidence.md section 5).
    "bundled": TrainingPreset(
        "Bundled model",
        "for the small bundled o1-shapes model on a CPU: 256 px, rank 16, 300 steps of 8 images at 3e-3, prior images",
        {
            "steps": 300,
            "rank": 16,
            "alpha": 16.0,
            "learning_rate": 3e-3,
            "resolution": 256,
            "batch_size": 8,
            "sample_every": 150,
            "lr_schedule": "cosine",
            "warmup_steps": 0,  # none: a warm-up would refuse a request of fewer steps (LoRA B starts at 0)
            # a dataset without reg/ images gets the base model's own images of its captions without the trigger
            # (core/train/prior.py): they gated the style better than rendered plain twins (docs/evidence.md, 5)
            "prior_preservation": True,
        },
    ),
}


def apply_preset(name: str, request: dict[str, Any]) -> dict[str, Any]:
    """`request` with the preset's value for every field it leaves out: what a person writes wins."""
    return {**TRAINING_PRESETS[name].values, **request}
