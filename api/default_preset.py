"""The service's default training preset: what a POST /v1/trainings that names no preset gets.

Settings.default_training_preset says which one (the "bundled" preset when the base model is the bundled
models/o1-shapes, O1LORA_TRAINING_PRESET to choose another or none). A request that leaves `preset` out is
validated again with that preset, so the preset fills only the fields the request left out and its values meet
the same checks as typed ones; `"preset": null` asks for the recipe's own defaults explicitly.
"""

from __future__ import annotations

import json

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.schemas import TrainingCreate
from core.train.presets import TRAINING_PRESETS
from service.settings import Settings


def check_default_preset(settings: Settings) -> None:
    """At start: an unknown O1LORA_TRAINING_PRESET fails the API there, not every training request."""
    name = settings.default_training_preset
    if name is not None and name not in TRAINING_PRESETS:
        raise ValueError(
            f"O1LORA_TRAINING_PRESET={settings.training_preset!r} is no training preset; "
            f"choose one of {', '.join(TRAINING_PRESETS)}, 'auto' or 'none'"
        )


def with_default_preset(body: TrainingCreate, settings: Settings) -> TrainingCreate:
    name = settings.default_training_preset
    if name is None or "preset" in body.model_fields_set:
        return body
    # Only what the person sent (exclude_unset), as JSON, so that strict validation reads it as it read the body.
    given = body.model_dump(mode="json", exclude_unset=True)
    try:
        return TrainingCreate.model_validate_json(json.dumps({**given, "preset": name}))
    except ValidationError as e:
        # e.g. sample_every 500 with the preset's 160 steps: the same 422 as any invalid body, saying why
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        for err in errors:
            err["msg"] = f'{err["msg"]} (with the service\'s default preset {name!r}; send "preset" to choose)'
        raise RequestValidationError(errors, body=given) from None
