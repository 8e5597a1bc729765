"""One error shape for every error the API answers (documented in docs/api.md):

    {"error": {"code": "not_found", "message": "LoRA 3f2a… not found", "field": "loras[0].id"}}
    {"error": {"code": "invalid", "message": "guidance: Input should be a finite number", "field": "guidance",
               "details": [{"field": "guidance", "message": "Input should be a finite number"}]}}

``code`` is a stable machine-readable word (one per status unless a route says otherwise), ``message`` a sentence
for a person, ``field`` the request field at fault where there is one, ``details`` every problem of a 422, and
``report`` the dataset validator's report where an upload was refused for its content.

Routes raise ``ApiError``; the handlers installed by ``install_error_handlers`` turn FastAPI's validation errors,
Starlette's HTTP errors (404 of an unknown path, 405), body-size refusals, database errors and anything
unexpected into the same shape. Every message is scrubbed of object reprs and server paths on the way out.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.db_retry import UNAVAILABLE_FLAG

log = logging.getLogger(__name__)

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "too_many_active_jobs",
    500: "internal",
    503: "unavailable",
}
DB_RETRY_AFTER_S = 2  # a dropped connection is replaced by the next request; a short wait is enough


class ErrorItem(BaseModel):
    field: str | None = Field(None, description="the request field at fault (dotted path, list indexes in [])")
    message: str = Field(description="what is wrong with it")


class ErrorDetail(BaseModel):
    code: str = Field(
        description="stable machine-readable code: invalid, not_found, unauthorized, conflict, "
        "too_large, too_many_active_jobs, method_not_allowed, unavailable, internal"
    )
    message: str = Field(description="what went wrong, for a person")
    field: str | None = Field(None, description="the request field at fault, when there is one")
    details: list[ErrorItem] | None = Field(None, description="every problem found (422 of a request body)")
    report: dict[str, Any] | None = Field(
        None,
        description="dataset uploads refused for their content: the "
        "validator's report (every file that would not train)",
    )


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail = Field(description="what went wrong")


DESCRIPTIONS = {
    401: "missing, malformed, unknown or revoked API key",
    404: "no such resource of yours",
    409: "the resource is not in a state that allows this",
    413: "request body over the size limit",
    422: "a request value is invalid (the error names the field)",
    429: "too many of your jobs are queued or running; retry after the Retry-After seconds",
    503: "the database is unavailable for a moment; retry after the Retry-After seconds",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, all with the one error body."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {"model": ErrorBody, "description": DESCRIPTIONS.get(status, CODES.get(status, "error"))}
        if status in (429, 503):
            out[status]["headers"] = RETRY_AFTER
    return out


class ApiError(StarletteHTTPException):
    """An error answered in the one shape; ``code`` defaults to the status's."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        report: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(status, message, headers=headers)
        self.code, self.field, self.details, self.report = (
            code or CODES.get(status, "error"),
            field,
            details,
            report,
        )
        self.message = message


# ---- scrubbing: no object reprs, no server paths ----------------------------------------------------------------

_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


_REGISTERED_ROOTS: set[str] = set()  # the data and artifact folders of every app created (create_app adds them)


def register_server_roots(*roots: str | Path) -> None:
    _REGISTERED_ROOTS.update(str(Path(r).resolve()) for r in roots)


def _server_roots() -> set[str]:
    roots = {
        str(Path(__file__).resolve().parents[1]),
        tempfile.gettempdir(),
        "/tmp",
        "/var/tmp",
        *_REGISTERED_ROOTS,
    }
    try:
        roots.add(str(Path.cwd()))
    except OSError:  # the working directory was deleted under us
        pass
    return roots


def scrub(text: str, extra_roots: Iterable[str] = ()) -> str:
    """The message with object reprs removed and absolute paths under server folders cut to their last part."""
    text = _REPR.sub("(internal object)", text)
    for root in sorted({r.rstrip("/") for r in (*extra_roots, *_server_roots())} - {""}, key=len, reverse=True):
        # Longest first: a file under the artifact folder loses the whole folder, not just the repository's part.
        text = re.sub(
            re.escape(root) + r"(/[^\s'\"():,;]*)?(?![\w.-])",
            lambda m: Path(m.group(0)).name if m.group(1) else "<server>",
            text,
        )
    return text


def _scrub_any(value: Any, roots: Iterable[str]) -> Any:
    """Scrubbed strings, and only values JSON can hold (a non-finite float becomes null, anything else text)."""
    if isinstance(value, str):
        return scrub(value, roots)
    if isinstance(value, dict):
        return {str(k): _scrub_any(v, roots) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub_any(v, roots) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int)):
        return value
    return scrub(str(value), roots)


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    code: str | None = None,
    field: str | None = None,
    details: list[dict[str, Any]] | None = None,
    report: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    roots: tuple[str, ...] = ()  # the registered server roots are always applied
    error: dict[str, Any] = {"code": code or CODES.get(status, "error"), "message": scrub(message, roots)}
    if field is not None:
        error["field"] = field
    if details is not None:
        error["details"] = _scrub_any(details, roots)
    if report is not None:
        error["report"] = _scrub_any(report, roots)
    return JSONResponse({"error": error}, status_code=status, headers=headers)


# ---- handlers ---------------------------------------------------------------------------------------------------


def field_path(loc: Iterable[Any]) -> str | None:
    """('body', 'loras', 0, 'scale') -> 'loras[0].scale'; None for the body as a whole."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def _validation_items(exc: RequestValidationError) -> list[dict[str, Any]]:
    items = []
    for e in exc.errors():
        msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        if e.get("type") == "json_invalid":
            items.append({"field": None, "message": f"not valid JSON ({e.get('ctx', {}).get('error', msg)})"})
            continue
        items.append({"field": field_path(e.get("loc", ())), "message": msg})
    return items


async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    # The input is never echoed back: it may be anything (NaN, bytes, a huge string) and the client has it.
    items = _validation_items(exc) or [{"field": None, "message": "invalid request"}]
    first = items[0]
    message = f"{first['field'] or 'request body'}: {first['message']}"
    if len(items) > 1:
        message += f" (and {len(items) - 1} more problem{'s' if len(items) > 2 else ''})"
    return error_response(request, 422, message, field=first["field"], details=items)


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (Starlette's own 405 names only the first route's): each
    method is tried against the routing table as it is, included routers and all."""
    base = {k: v for k, v in request.scope.items() if k in ("type", "path", "root_path", "raw_path", "headers")}
    return [
        m
        for m in HTTP_METHODS
        if any(route.matches({**base, "method": m})[0] is Match.FULL for route in request.app.router.routes)
    ]


async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = dict(exc.headers or {})
    if isinstance(exc, ApiError):
        return error_response(
            request,
            exc.status_code,
            exc.message,
            code=exc.code,
            field=exc.field,
            details=exc.details,
            report=exc.report,
            headers=headers or None,
        )
    if exc.status_code == 405:
        methods = allowed_methods(request)
        headers["Allow"] = ", ".join(methods)
        return error_response(
            request, 405, f"{request.method} is not allowed here; allowed: {', '.join(methods)}", headers=headers
        )
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}"
    if exc.status_code == 400 and request.method in ("POST", "PUT", "PATCH"):
        # FastAPI's answer to a body it cannot even decode (bytes that are not UTF-8 JSON, a broken multipart):
        # the same 422 as any other invalid body.
        return error_response(request, 422, f"the request body could not be parsed ({detail})", field=None)
    return error_response(request, exc.status_code, str(detail), headers=headers or None)


async def _on_unstorable(request: Request, exc: DataError) -> JSONResponse:
    # The schemas refuse what they can name; this catches the rest (e.g. a NUL byte in a path id) as a 4xx.
    return error_response(
        request,
        422,
        "the request holds a value the database cannot store or compare "
        "(e.g. a NUL character or a number out of range)",
    )


def is_disconnect(exc: BaseException) -> bool:
    """A database error that a retry on a fresh connection can cure (a dropped connection, a pool timeout)."""
    if isinstance(exc, PoolTimeout):
        return True
    return isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
    )


async def _on_database(request: Request, exc: DBAPIError) -> JSONResponse:
    if not is_disconnect(exc):
        return await _on_unexpected(request, exc)
    log.warning("database unavailable for %s %s: %s", request.method, request.url.path, str(exc).splitlines()[0])
    request.scope.setdefault("state", {})[UNAVAILABLE_FLAG] = (
        True  # re-run if nothing was committed (api/db_retry.py)
    )
    return error_response(
        request,
        503,
        "the database is unavailable for a moment; retry shortly",
        headers={"Retry-After": str(DB_RETRY_AFTER_S)},
    )


async def _on_pool_timeout(request: Request, exc: PoolTimeout) -> JSONResponse:
    return error_response(
        request, 503, "the database is busy; retry shortly", headers={"Retry-After": str(DB_RETRY_AFTER_S)}
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, "internal error; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(DataError, _on_unstorable)
    app.add_exception_handler(DBAPIError, _on_database)
    app.add_exception_handler(PoolTimeout, _on_pool_timeout)
    app.add_exception_handler(Exception, _on_unexpected)
