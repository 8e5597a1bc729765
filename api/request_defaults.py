"""The service's defaults for a generation request: what a POST /v1/generations that leaves fields out gets.

Size: Settings.default_generation_size (256x256 on the bundled model, which was trained at 128-256 px; 1024x1024,
the official size, on any other; O1LORA_GENERATION_SIZE to choose). Steps and CFG of the "full" preset:
Settings.default_generation_sampling (on the bundled model its own, core.presets.BUNDLED_MODEL_SAMPLING, since
the preset's 50 steps at CFG 5 are the 8B model's and overshoot the small one; O1LORA_GENERATION_SAMPLING to
choose). The OpenAPI document carries them as the fields' defaults, so the web page's form and generated clients
show what a request will get. A field the request gives is kept as sent.
"""

from __future__ import annotations

from typing import Any

from api.schemas import GenerationCreate
from core.presets import BUNDLED_MODEL_SAMPLING
from service.settings import Settings


def default_sampling(settings: Settings) -> dict | None:
    """{"steps", "guidance"} that replace the full preset's for a request leaving them out; None: the preset's."""
    choice = settings.default_generation_sampling
    if choice == "preset":
        return None
    return dict(BUNDLED_MODEL_SAMPLING) if choice == "bundled" else choice


def with_service_defaults(body: GenerationCreate, settings: Settings) -> GenerationCreate:
    """The request with the service's size for the side(s) it left out, and, for the full preset, the service's
    steps and CFG where it gave none (a given field is kept as sent)."""
    width, height = settings.default_generation_size
    given = body.model_fields_set
    update = {k: v for k, v in (("width", width), ("height", height)) if k not in given}
    sampling = default_sampling(settings)
    if sampling is not None and body.preset == "full":
        update.update({k: v for k, v in sampling.items() if k not in given})
    return body.model_copy(update=update) if update else body


def document_service_defaults(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The OpenAPI document with GenerationCreate's width/height (and steps/guidance) defaults set to the
    service's."""
    props = spec.get("components", {}).get("schemas", {}).get("GenerationCreate", {}).get("properties", {})
    for name, value in zip(("width", "height"), settings.default_generation_size):
        if name in props:
            props[name]["default"] = value
            props[name]["description"] = f"image {name}, multiple of 32; default: this service's, {value}"
    sampling = default_sampling(settings)
    for name, what in (("steps", "sampling steps"), ("guidance", "CFG scale")):
        if sampling is not None and name in props:
            props[name]["description"] = (
                f"{what}; default with preset full: this service's, {sampling[name]:g} (dev: the preset's)"
            )
    return spec
