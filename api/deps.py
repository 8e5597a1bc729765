"""FastAPI dependencies as Annotated aliases; everything comes from app.state, set by create_app."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, Iterator

from fastapi import Depends, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.db_retry import COMMIT_FLAG
from api.errors import ApiError, is_disconnect
from api.schemas import JobStatus
from db.models import Owner
from db.owners import owner_for_key
from jobqueue.enqueue import Enqueuer
from service.settings import Settings
from service.store import ArtifactStore

log = logging.getLogger(__name__)


def get_session(request: Request) -> Iterator[Session]:
    session = request.app.state.sessions()
    state = request.scope.setdefault("state", {})

    @event.listens_for(session, "before_commit")
    def _commit_attempted(_session):
        state[COMMIT_FLAG] = True  # from here a dropped connection may have committed: no automatic re-run

    try:
        yield session
    finally:
        close_quietly(session)


def close_quietly(session: Session) -> None:
    """Close a session whose connection the database may have dropped. A failed rollback of a dead connection
    (SQLAlchemy has already invalidated it; the pool replaces it) must not raise: the request's work is done,
    and after a stream (job_events' own sessions) the response was already answered in full."""
    try:
        session.close()
    except DBAPIError as e:
        if not is_disconnect(e):
            raise
        log.info("closed a session whose database connection was gone: %s", str(e).splitlines()[0])


# scope="function": the session (and its pooled connection) is closed when the endpoint returns. With the
# default scope it stayed open until the response had been sent in full and its background tasks had run: an
# open SSE stream held a connection for its whole life while its snapshots needed a second one from the same
# pool, and a job submit held one while its after-response enqueue waited for a second. With more such
# requests than the pool's 15 connections, each waited out the pool timeout (30 s, then 503): 8 concurrent
# submits or 40 open streams stalled the API (bench/load_api.py; docs/scaling.md; get_owner has the other half).
# Endpoints return public models built before they return (nothing reads the ORM rows after).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


# Declares the bearer scheme in OpenAPI (so /docs can authorise); the checks and the 401s are get_owner's own.
bearer = HTTPBearer(
    auto_error=False, scheme_name="apiKey", description="an API key from `python -m db.create_owner`"
)


def get_owner(
    request: Request,
    session: SessionDep,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> Owner:
    """The owner of the Bearer key; 401 for a missing, malformed, unknown or revoked key."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    owner = owner_for_key(session, key=key.strip())
    # End the read here: FastAPI runs this dependency and the endpoint as two calls on its thread pool, and a
    # connection held between them (no thread of the request running) starved the pool once all 40 threads
    # waited for a connection: 32 concurrent submits stalled 30 s. The endpoint takes one when it first reads,
    # on its own thread. The owner stays readable (its attributes are loaded; endpoints use owner.id).
    session.close()
    if owner is None:
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return owner


CurrentOwner = Annotated[Owner, Depends(get_owner)]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_enqueuer(request: Request) -> Enqueuer:
    return request.app.state.enqueuer


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]


def not_found(what: str, id_: str, field: str | None = None) -> ApiError:
    # The same answer for "does not exist" and "belongs to someone else": ids leak nothing.
    message = f"{what} {id_} not found"
    return ApiError(status.HTTP_404_NOT_FOUND, f"{field}: {message}" if field else message, field=field)


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int


MAX_OFFSET = 2**62  # both databases take a signed 64-bit OFFSET; beyond it is a 422, not an overflow


def get_page(
    limit: Annotated[int, Query(ge=1, le=100, description="page size")] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")] = 0,
) -> Page:
    return Page(limit, offset)


PageDep = Annotated[Page, Depends(get_page)]  # ?limit=&offset= of every list route
StatusFilter = Annotated[JobStatus | None, Query(alias="status", description="only jobs in this state")]


def _id_param(what: str) -> Any:
    return Path(
        description=f"id of one of your {what} (as returned when it was created)",
        min_length=1,
        max_length=64,
        pattern=r"^[^\x00/]+$",
    )


DatasetId = Annotated[str, _id_param("datasets")]
TrainingId = Annotated[str, _id_param("training jobs")]
LoraId = Annotated[str, _id_param("LoRAs")]
GenerationId = Annotated[str, _id_param("generations")]
ImageId = Annotated[str, _id_param("uploaded images")]
