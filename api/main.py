"""The FastAPI app: wires settings, DB sessions, the artifact store, the Celery enqueuer and the routers.

    .venv/bin/uvicorn --factory api.main:create_app --port 8000      # settings from env / .env
    app = create_app(Settings(database_url=...), enqueuer=Enqueuer(lambda: my_celery))   # tests, embedding

The schema is not created here: run migrations first (`python -m db.migrate`; the embedded launcher does).
"""

from __future__ import annotations

import redis
from fastapi import FastAPI
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.db_retry import RetryOnDisconnect
from api.default_preset import check_default_preset
from api.errors import install_error_handlers, register_server_roots
from api.limits import BodySizeLimit
from api.metrics import install_metrics
from api.openapi import install_openapi
from api.routes import datasets, generations, health, images, loras, training_presets, trainings, webhooks
from api.web_page import install_web_page
from db.session import make_sessionmaker
from jobqueue.enqueue import Enqueuer
from service.settings import Settings, get_settings
from service.store import ArtifactStore
from service.stores import make_store

JSON_BODY_LIMIT = 1 << 20  # every non-upload request: a job spec is a few kB

DESCRIPTION = """Train LoRA adapters for HiDream-O1-Image and generate images with them.

Every route but /health, /ready and /metrics needs `Authorization: Bearer <api key>` (the Authorize button
above).
Every error answers `{"error": {"code", "message", "field"?, "details"?}}`; 429 and 503 carry `Retry-After`."""


def create_app(
    settings: Settings | None = None, *, store: ArtifactStore | None = None, enqueuer: Enqueuer | None = None
) -> FastAPI:
    settings = settings or get_settings()
    check_default_preset(settings)
    app = FastAPI(title="o1lora", version="0.1.0", description=DESCRIPTION)
    app.state.settings = settings
    app.state.sessions = make_sessionmaker(settings.resolved_database_url)
    app.state.store = store or make_store(settings)
    app.state.enqueuer = enqueuer or Enqueuer()
    # For the few events the API itself publishes (a queued job canceled); short timeouts, best effort.
    app.state.redis = redis.Redis.from_url(
        settings.resolved_redis_url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    for module in (health, datasets, images, trainings, training_presets, loras, generations, webhooks):
        app.include_router(module.router)
    install_metrics(app, app.state.sessions, settings)
    install_web_page(app)  # the page at `/`: static files, a client of the routes above like any other

    def limit_for(method: str, path: str) -> int:
        if method == "POST" and path.rstrip("/") == "/v1/datasets":
            return settings.max_upload_request_bytes
        if method == "POST" and path.rstrip("/") == "/v1/loras":
            return settings.max_lora_bytes + (1 << 20)  # + multipart framing and the form fields
        if method == "POST" and path.rstrip("/") == "/v1/images":
            return settings.max_upload_file_bytes + (1 << 20)  # one image + multipart framing
        return JSON_BODY_LIMIT

    app.add_middleware(BodySizeLimit, limit_for=limit_for)
    app.add_middleware(RetryOnDisconnect)
    install_error_handlers(app)
    install_openapi(app, settings)
    register_server_roots(settings.data_dir, settings.resolved_artifact_dir)  # never named in an error
    return app
