"""Training checkpoints: weights + optimizer + LR schedule + RNG states + data position, written atomically.

    out_dir/checkpoints/step-000500/
        weights.safetensors     the adapter (LoRA mode) or every parameter (full mode)
        state.pt                optimizer, scheduler, RNG states, data state, step, smoothed loss, config,
                                the validation history
        best.safetensors        the adapter of the lowest validation loss, when that is not this step's

A checkpoint is assembled in a hidden temp folder beside the final one and renamed into place, so a
killed process leaves either the whole checkpoint or none of it; `latest_checkpoint` ignores temp folders.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from core.atomic_files import atomic_dir

_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "state.pt").is_file() and (p / "weights.safetensors").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1][1] if found else None


def rng_states(generator: torch.Generator) -> dict:
    """Every random stream a step draws from: ours (sigma, eps), torch's global CPU/CUDA ones (dropout)."""
    states = {"generator": generator.get_state(), "cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(generator: torch.Generator, states: dict) -> None:
    generator.set_state(states["generator"])
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    state: dict,
    keep: int = 0,
    metadata: dict[str, str] | None = None,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write step `step` atomically; then drop all but the newest `keep` checkpoints (0 keeps all).
    metadata: strings in the weights file's safetensors header (step, validation loss); extra: more
    safetensors files by name (the best adapter so far)."""
    final = ckpt_root / step_dir_name(step)
    # replace: a re-run of the same step (after a resume) replaces that checkpoint whole
    with atomic_dir(final, replace=True) as tmp:
        save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in weights.items()},
            str(tmp / "weights.safetensors"),
            metadata=metadata,
        )
        for name, tensors in (extra or {}).items():
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp / name))
        torch.save(state, tmp / "state.pt")
    if keep > 0:
        for _, old in list_checkpoints(ckpt_root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not (path / "state.pt").is_file() or not (path / "weights.safetensors").is_file():
        raise FileNotFoundError(f"{path} is not a training checkpoint (needs state.pt and weights.safetensors)")
    weights = load_file(str(path / "weights.safetensors"), device=str(device))
    # Our own file, holding optimizer tensors, RNG byte tensors and plain Python containers.
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    return weights, state
