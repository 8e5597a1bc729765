"""The service's default image size: what a POST /v1/generations that gives no width and height gets.

Settings.default_generation_size says which (128x128 on the bundled model, which was trained at 64-256 px;
1024x1024, the official size, on any other; O1LORA_GENERATION_SIZE to choose). The OpenAPI document carries it
as the fields' default, so the web page's form and generated clients show the size a request will get.
"""

from __future__ import annotations

from typing import Any

from api.schemas import GenerationCreate
from service.settings import Settings


def with_default_size(body: GenerationCreate, settings: Settings) -> GenerationCreate:
    """The request with the service's size for the side(s) it left out (a given side is kept as sent)."""
    width, height = settings.default_generation_size
    update = {}
    if "width" not in body.model_fields_set:
        update["width"] = width
    if "height" not in body.model_fields_set:
        update["height"] = height
    return body.model_copy(update=update) if update else body


def document_default_size(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The OpenAPI document with GenerationCreate's width/height defaults set to the service's."""
    props = spec.get("components", {}).get("schemas", {}).get("GenerationCreate", {}).get("properties", {})
    for name, value in zip(("width", "height"), settings.default_generation_size):
        if name in props:
            props[name]["default"] = value
            props[name]["description"] = f"image {name}, multiple of 32; default: this service's, {value}"
    return spec
