"""What can go wrong talking to the service, as exceptions that carry a sentence a person can act on."""

from __future__ import annotations

from typing import Any

import httpx


class ClientError(Exception):
    """Anything the client reports to a person: the message is the whole story."""


class ApiError(ClientError):
    """The service refused a request; fields come from its one error body shape
    ``{"error": {"code", "message", "field"?, "details"?, "report"?}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        report: dict[str, Any] | None = None,
        retry_after: str | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.details, self.report, self.retry_after = field, details or [], report, retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> "ApiError":
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except Exception:  # not the service's error body (a proxy's HTML page, an empty 502...)
            text = response.text.strip().replace("\n", " ")[:300]
            message = f"HTTP {response.status_code}" + (f": {text}" if text else "")
            return cls(response.status_code, "http_error", message)
        return cls(
            response.status_code,
            code,
            message,
            field=error.get("field"),
            details=error.get("details"),
            report=error.get("report"),
            retry_after=response.headers.get("Retry-After"),
        )

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status} {self.code})"


class Unreachable(ClientError):
    """No HTTP answer at all: wrong URL, service down, network trouble."""


class JobEnded(ClientError):
    """A followed job ended other than succeeded; ``job`` is its final public state."""

    def __init__(self, kind: str, job: dict[str, Any]):
        self.kind, self.job = kind, job
        why = f": {job['error']}" if job.get("error") else ""
        super().__init__(f"{kind} {job['id']} {job['status']}{why}")
