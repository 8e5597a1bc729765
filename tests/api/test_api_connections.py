"""A request holds a pooled database connection only while one of its calls runs on a thread: never between
FastAPI's calls (a dependency, then the endpoint), never while its SSE stream or background task goes on. Held
connections without a running thread starved the pool (15 connections) against the thread pool (40 threads):
32 concurrent submits or 40 open streams stalled the API for the pool timeout (bench/load_api.py,
docs/scaling.md)."""

from __future__ import annotations

import time

from api_helpers import auth
from fastapi.testclient import TestClient
from starlette.requests import Request

from api.deps import get_owner
from api.main import create_app


def test_the_owner_lookup_ends_its_read(app, alice, Session):
    session = Session()
    request = Request({"type": "http", "headers": [(b"authorization", alice["Authorization"].encode())]})
    owner = get_owner(request, session)
    assert owner.id == alice["owner_id"]  # readable without the session
    assert not session.in_transaction()  # the connection is back in the pool until the endpoint reads
    session.close()


def test_an_open_stream_holds_no_database_connection(settings, alice, dataset, app):
    """The request's session is closed when the endpoint returns, not when its stream ends (a stream held one
    connection for its whole life while each snapshot needed another)."""
    app = create_app(settings.model_copy(update={"sse_recheck_s": 30.0}), enqueuer=app.state.enqueuer)
    pool = app.state.sessions.kw["bind"].pool
    with TestClient(app) as c:
        job = c.post("/v1/trainings", headers=auth(alice), json={"dataset_id": dataset["id"], "trigger": "t"})
        job = job.json()
        with c.stream("GET", f"/v1/trainings/{job['id']}/events", headers=auth(alice)) as resp:
            lines = resp.iter_lines()
            assert next(lines) == "event: snapshot"
            # The stream now waits up to 30 s for a live event, holding no connection: the request's and the
            # snapshot's sessions are closed. (Closing one may finish a few ms after the first line is sent, on
            # another thread: what matters is that nothing stays checked out while the stream waits.)
            deadline = time.monotonic() + 1.0
            while pool.checkedout() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert pool.checkedout() == 0
