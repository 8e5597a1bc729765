"""What a caller hands a training run besides its config (callbacks) and what it gets back (the result)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class TrainCallbacks:
    """Hooks the caller passes in (nothing global). Exceptions raised by a hook stop training."""

    on_step: Callable[[int, int, float, float, float, float, float], None] | None = None
    # on_step(step, total, loss, smoothed_loss, lr, seconds_per_step, eta_seconds), every log_every steps
    on_preview: Callable[[int, list[Path]], None] | None = None  # (step, [png paths])
    on_checkpoint: Callable[[int, Path], None] | None = None  # (step, checkpoint folder)
    should_stop: Callable[[], bool] | None = None  # asked every step; True: save and stop
    on_validation: Callable[[int, float, bool, dict], None] | None = None
    # on_validation(step, loss, is_baseline, summary): after each fixed-noise validation loss (the baseline,
    # adapter off, comes first); summary is ValidationHistory.summary() (series, baseline, best, seconds)
    on_prepare: Callable[[str, int, int], None] | None = None
    # on_prepare(what, done, total): work before the first step that takes a while, e.g. ("prior images", 8, 24)
    # after each batch of prior images the base model draws (minutes on a full-size model); should_stop is asked
    # between those batches too, and a stop there ends the run at step 0


@dataclass
class TrainResult:
    steps_done: int  # optimizer steps completed (including before a resume)
    stopped: bool  # True when should_stop ended the run early
    last_loss: float | None  # loss of the last logged step
    smoothed_loss: float | None
    checkpoint: Path | None  # newest checkpoint written
    lora_dir: Path | None = None  # PEFT folder (LoRA mode, completed runs)
    lora_file: Path | None = None  # ComfyUI file (LoRA mode, completed runs)
    model_dir: Path | None = None  # full mode: HF folder of the trained model
    previews: list[Path] = field(default_factory=list)
    early_stopped: bool = False  # validation stopped improving for early_stop_patience evaluations
    validation: dict | None = None  # ValidationHistory.summary() of a run that validated
    published_step: int | None = None  # the step whose weights lora_dir / lora_file hold
    other_lora: tuple | None = None  # (which "last"|"best", step, PEFT folder, ComfyUI file) when they differ
