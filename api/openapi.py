"""The OpenAPI document, completed with the statuses every route can answer that FastAPI cannot see from the
route itself: 500 (the handler of anything unexpected, api/errors.py) on every operation, and 413 on every
POST (api/limits.BodySizeLimit refuses any body over its limit before a route runs). Both in the one error
body shape, so a generated client can type every error it may get."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from api.errors import DESCRIPTIONS, RETRY_AFTER
from api.request_defaults import document_service_defaults

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
INTERNAL = "internal error; it has been logged (the message never holds server paths)"


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def complete(spec: dict[str, Any]) -> dict[str, Any]:
    for ops in spec.get("paths", {}).values():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            responses.setdefault("500", _error(INTERNAL))
            if method == "post":
                responses.setdefault("413", _error(DESCRIPTIONS[413]))
            if "429" in responses:
                responses["429"].setdefault("headers", RETRY_AFTER)
    return spec


def install_openapi(app: FastAPI, settings=None) -> None:
    """`settings`: the service's own defaults (the generation size) go into the document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = complete(build())
            app.openapi_schema = document_service_defaults(spec, settings) if settings is not None else spec
        return app.openapi_schema

    app.openapi = openapi
