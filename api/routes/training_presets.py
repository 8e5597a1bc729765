"""/v1/training-presets: the named training recipes (core.train.presets), for forms and clients."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentOwner, SettingsDep
from api.errors import error_responses
from api.schemas import TrainingPresetPublic
from core.train.presets import TRAINING_PRESETS

router = APIRouter(tags=["trainings"], responses=error_responses(401, 422, 503))


@router.get("/v1/training-presets", response_model=dict[str, TrainingPresetPublic])
def list_training_presets(owner: CurrentOwner, settings: SettingsDep):  # the key, like every /v1 route
    """Each preset's label, one-line summary and the request fields it sets; pass its name as `preset` on
    POST /v1/trainings (fields you give win over it). The one marked `default` is what a request that names
    no preset gets (the "bundled" one when the service runs the bundled model; none marked: the recipe's)."""
    default = settings.default_training_preset
    return {
        name: TrainingPresetPublic(label=p.label, summary=p.summary, values=p.values, default=name == default)
        for name, p in TRAINING_PRESETS.items()
    }
