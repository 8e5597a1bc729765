"""/v1/training-presets: the named training recipes (core.train.presets), for forms and clients."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentOwner
from api.errors import error_responses
from api.schemas import TrainingPresetPublic
from core.train.presets import TRAINING_PRESETS

router = APIRouter(tags=["trainings"], responses=error_responses(401, 422, 503))


@router.get("/v1/training-presets", response_model=dict[str, TrainingPresetPublic])
def list_training_presets(owner: CurrentOwner):  # the key, like every /v1 route; the same for everyone
    """Each preset's label, one-line summary and the request fields it sets; pass its name as `preset` on
    POST /v1/trainings (fields you give win over it)."""
    return {
        name: TrainingPresetPublic(label=p.label, summary=p.summary, values=p.values)
        for name, p in TRAINING_PRESETS.items()
    }
