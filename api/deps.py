"""FastAPI dependencies as Annotated aliases; everything comes from app.state, set by create_app."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Iterator

from fastapi import Depends, HTTPException, Query, Request, status
from sqlalchemy.orm import Session

from api.enqueue import Enqueuer
from api.schemas import JobStatus
from api.settings import Settings
from db.models import Owner
from db.owners import owner_for_key
from db.store import ArtifactStore


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_owner(request: Request, session: SessionDep) -> Owner:
    """The owner of the Bearer key; 401 for a missing, malformed, unknown or revoked key."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    owner = owner_for_key(session, key=key.strip())
    if owner is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key",
                            headers={"WWW-Authenticate": "Bearer"})
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


def not_found(what: str, id_: str) -> HTTPException:
    # The same answer for "does not exist" and "belongs to someone else": ids leak nothing.
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {id_} not found")


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int


def get_page(limit: Annotated[int, Query(ge=1, le=100, description="page size")] = 20,
             offset: Annotated[int, Query(ge=0, description="items to skip")] = 0) -> Page:
    return Page(limit, offset)


PageDep = Annotated[Page, Depends(get_page)]  # ?limit=&offset= of every list route
StatusFilter = Annotated[JobStatus | None, Query(alias="status", description="only jobs in this state")]
