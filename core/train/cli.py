"""Train a LoRA for HiDream-O1-Image (the published recipe and then some), or all weights of a small model.

    python -m core.train --data_dir photos/ --out_dir runs/style --resolution 1024 --steps 2500 --rank 16 \\
        --sample_every 500 --sample_prompt "sks style, a lighthouse at dusk" --trigger "sks style"
    python -m core.train ... --resume            # continue from the newest checkpoint in out_dir
    torchrun --nproc_per_node 4 -m core.train ...   # one job on 4 GPUs of a host (DDP, see core.train.distributed)

One flag for every plain TrainConfig field; its help is the field's comment in core/train/config.py.
--preset names a recipe of core.train.presets (the service's table) whose values fill the flags not given; "auto"
(the default) is "bundled" on the bundled models/o1-shapes, which --model defaults to, and none on any other model.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from core.bundled import BUNDLED_MODEL_DIR, BUNDLED_TRAINING_PRESET, is_bundled_model
from core.train.config import REQUEST_NAMES, TrainConfig
from core.train.hooks import TrainCallbacks, TrainResult
from core.train.presets import TRAINING_PRESETS

_CHOICES = {
    "lr_schedule": ("constant", "cosine"),
    "sigma_dist": ("uniform", "shifted", "logit_normal"),
    "weighting": ("none", "velocity"),
    "precision": ("auto", "bf16", "fp32"),
    "base_precision": ("auto", "bf16", "fp8"),
    "publish": ("last", "best"),
    "grad_sync": ("auto", "overlap", "after"),
}


def _field_comments() -> dict[str, str]:
    """TrainConfig's per-field comments, so the CLI help and the dataclass cannot drift apart."""
    import inspect
    import re

    out, last = {}, None
    for line in inspect.getsource(TrainConfig).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if m:
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif last and (more := re.match(r"\s+#(?!\s*--)\s*(.+)$", line)):  # carried on ("# --" opens a section)
            out[last] += " " + more.group(1).strip()
        else:
            last = None
    return out


def _parser() -> argparse.ArgumentParser:
    """The recipe's flags, then one flag for every other plain TrainConfig field (defaults: the dataclass)."""
    ap = argparse.ArgumentParser(prog="python -m core.train", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        dest="model_path",
        default=str(BUNDLED_MODEL_DIR),
        help="base checkpoint: HF folder or ComfyUI file (default: the bundled models/o1-shapes, the service's default)",
    )
    ap.add_argument(
        "--preset",
        default="auto",
        choices=("auto", "none", *TRAINING_PRESETS),
        help="a named recipe (core.train.presets) for the flags not given; auto: bundled on the bundled model, else "
        "none (TrainConfig's defaults, the published recipe)",
    )
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: = rank)")
    ap.add_argument("--sample_prompt", action="append", default=[], help="a preview prompt; repeat for several")
    ap.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="continue from the newest checkpoint in out_dir, or from the one given",
    )
    ap.add_argument("--extra_targets", nargs="*", default=[], choices=("x_embedder", "final_layer2"))
    ap.add_argument(
        "--gradient_checkpointing",
        choices=("auto", "on", "off"),
        default="auto",
        help="auto: only when the activations would not fit in free GPU memory",
    )
    ap.add_argument(
        "--compile",
        nargs="?",
        const="on",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the decoder layers; auto: on CUDA (a bare --compile means on)",
    )
    ap.add_argument(
        "--cuda_graphs",
        choices=("auto", "on", "off"),
        default="auto",
        help="replay the compiled decoder layers as CUDA graphs; auto: one CUDA process, no offload, no references, "
        "grad_accum 1",
    )
    ap.add_argument("--num_workers", type=int, default=2, help="DataLoader workers decoding images")
    taken = {a.dest for a in ap._actions}
    notes = _field_comments()
    for f in fields(TrainConfig):
        if f.name in taken or f.name in ("sample_prompts", "betas", "base_model_name"):
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        # argparse formats help strings with %: a literal % is %%
        help_ = f"{notes.get(f.name, '')} (default: {f.default})".replace("%", "%%")
        if kind == "bool":
            ap.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif kind in ("int", "float", "str", "int | None", "str | None", "float | None"):
            conv = {"int": int, "float": float}.get(kind.split(" ")[0], str)
            ap.add_argument(f"--{f.name}", type=conv, default=None, choices=_CHOICES.get(f.name), help=help_)
    return ap


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    a = _parser().parse_args(argv)
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(a).items() if k in names and v is not None}
    kw = {**preset_fields(a.preset, a.model_path), **given}
    rank = kw.get("rank", TrainConfig.rank)
    # alpha follows a rank given on the command line; else the preset's (its own rank's), else = rank
    kw["alpha"] = float(a.alpha if a.alpha is not None else rank if "rank" in given else kw.get("alpha", rank))
    kw["sample_prompts"] = tuple(a.sample_prompt)
    kw["extra_targets"] = tuple(a.extra_targets)
    for name in ("gradient_checkpointing", "compile", "cuda_graphs"):  # auto | on | off -> "auto" | True | False
        kw[name] = {"auto": "auto", "on": True, "off": False}[getattr(a, name)]
    return TrainConfig(**kw)


def preset_fields(preset: str, model_path: str) -> dict:
    """The TrainConfig fields a preset sets ("auto": the bundled model's preset on it, else none)."""
    if preset == "auto":
        preset = BUNDLED_TRAINING_PRESET if is_bundled_model(model_path) else "none"
    if preset == "none":
        return {}
    return {REQUEST_NAMES.get(k, k): v for k, v in TRAINING_PRESETS[preset].values.items()}


def main(argv: list[str] | None = None) -> TrainResult:
    from tqdm import tqdm

    from core.train.trainer import Trainer

    cfg = config_from_args(argv)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    bar = tqdm(total=cfg.steps, unit="step", dynamic_ncols=True, disable=not main_rank)

    windows: list[float] = []  # s/step of each logged window (the first holds the compilation)

    def on_step(step, total, loss, smoothed, lr, sec, eta):
        bar.n = step
        windows.append(sec)
        bar.set_postfix(loss=f"{loss:.4f}", avg=f"{smoothed:.4f}", lr=f"{lr:.2e}", s_step=f"{sec:.3f}")

    def on_validation(step, loss, baseline, summary):
        if baseline:
            bar.write(f"validation: {summary['images']} image(s); baseline (adapter off) loss {loss:.5f}")
            return
        bar.write(
            f"step {step}: validation loss {loss:.5f} (baseline {summary['baseline']:.5f}; best "
            f"{summary['best_loss']:.5f} at step {summary['best_step']}; {summary['seconds']:.1f} s "
            f"spent validating)"
        )

    cbs = TrainCallbacks(
        on_step=on_step,
        on_validation=on_validation,
        on_preview=lambda step, paths: bar.write(f"step {step}: previews {', '.join(map(str, paths))}"),
        on_checkpoint=lambda step, folder: bar.write(f"step {step}: checkpoint {folder}"),
    )
    try:
        trainer = Trainer(cfg, cbs)
        bar.n = trainer.step
        result = trainer.run()
    finally:
        bar.close()
    if not main_rank:
        return result
    if len(windows) > 1:
        steady = sorted(windows[1:])
        print(
            f"seconds/step: {steady[len(steady) // 2]:.4f} (median of {len(steady)} logged windows after the "
            f"first, which took {windows[0]:.4f} with warm-up)"
        )
    peak = gpu_memory_peak()
    if peak:
        print(peak)
    if result.validation:
        v = result.validation
        print(
            f"validation: best {v['best_loss']} at step {v['best_step']} (baseline {v['baseline']}), "
            f"{v['seconds']:.1f} s spent validating{'; stopped early' if result.early_stopped else ''}; "
            f"published: step {result.published_step}"
            + (
                f"; the {result.other_lora[0]} (step {result.other_lora[1]}): {result.other_lora[3]}"
                if result.other_lora
                else ""
            )
        )
    print(
        f"done: {result.steps_done} steps, smoothed loss {result.smoothed_loss}; "
        f"LoRA: {result.lora_dir} and {result.lora_file}"
        if not cfg.full
        else f"model: {result.model_dir}"
    )
    return result


def gpu_memory_peak() -> str | None:
    """The run's peak GPU memory (loading included), as a user checks it against a card: allocated tensors, and
    what the process held (a replayed CUDA graph allocates nothing: its memory pool shows only as reserved)."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    gib = 2**30
    return (
        f"peak GPU memory: {torch.cuda.max_memory_allocated() / gib:.2f} GiB allocated, "
        f"{torch.cuda.max_memory_reserved() / gib:.2f} GiB reserved"
    )
