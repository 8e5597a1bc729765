"""/health (the process answers) and /ready (the database, the broker and the artifact store answer). No key
needed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.schemas import Health, Ready

router = APIRouter(tags=["service"])


@router.get("/health", response_model=Health)
def health():
    """Liveness: answers while the process runs."""
    return Health(status="ok")


@router.get(
    "/ready", response_model=Ready, responses={503: {"model": Ready, "description": "a dependency is down"}}
)
def ready(request: Request):
    """Readiness: the database answers a query, the broker a ping and the artifact store a check."""
    checks = {
        "database": _check(lambda: _db(request)),
        "broker": _check(lambda: _broker(request)),
        "store": _check(request.app.state.store.check),
    }
    ok = all(v == "ok" for v in checks.values())
    body = Ready(status="ready" if ok else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def _check(fn) -> str:
    try:
        fn()
        return "ok"
    except Exception as e:
        return f"{type(e).__name__}: {e}"[:300]


def _db(request: Request) -> None:
    with request.app.state.sessions() as s:
        s.execute(text("SELECT 1"))


def _broker(request: Request) -> None:
    url = request.app.state.settings.broker_url
    if url.split(":", 1)[0] in ("redis", "rediss", "unix", "redis+socket"):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        redis.Redis.from_url(
            url.replace("redis+socket://", "unix://"),
            socket_connect_timeout=2,
            socket_timeout=2,
            retry=Retry(NoBackoff(), 0),
        ).ping()
    else:
        from kombu import Connection

        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
