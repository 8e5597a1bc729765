"""The small model shipped with the project, models/o1-shapes, and the defaults that suit it in the CLIs.

The 8B model's defaults (1024 px, the full preset's 50 steps at CFG 5, the recipe's 2,500 steps at 1e-4) do not
suit the 15M bundled model: it was trained at 128-256 px, CFG 5 overshoots it, and it learns a LoRA in minutes at
a learning rate that would wreck the 8B model. The service gives it its own defaults (service.settings "auto",
api.request_defaults); `python -m core.generate` and `python -m core.train` give it the same ones through this
module, when the model path is this folder. Imports no torch.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "o1-shapes"
BUNDLED_IMAGE_SIDE = 256  # what it draws best (MODEL_CARD.md: small shapes 0.96 right at 256 px, 0.64 at 128)
BUNDLED_TRAINING_PRESET = "bundled"  # core.train.presets


def is_bundled_model(path: str | Path | None) -> bool:
    """Whether `path` is the bundled model's folder, however it is spelled."""
    if path is None:
        return False
    try:
        return Path(path).expanduser().resolve() == BUNDLED_MODEL_DIR.resolve()
    except OSError:
        return False


def model_sampling(model_path: str | Path | None, preset: str = "full") -> dict:
    """Steps and CFG that replace the preset's on this model: with the full preset, the bundled model's own
    (core.presets.BUNDLED_MODEL_SAMPLING; the preset's CFG 5 overshoots it), else none."""
    from core.presets import BUNDLED_MODEL_SAMPLING

    return dict(BUNDLED_MODEL_SAMPLING) if preset == "full" and is_bundled_model(model_path) else {}
