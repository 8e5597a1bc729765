"""The database drops the API's connections (pg_terminate_backend, as a restart or a proxy would) while requests
are in flight, on the real local PostgreSQL and a real uvicorn server on loopback: every request is answered, a
success or a 503 with the JSON error body and Retry-After (never a 500, never a reset connection), reads are
retried once on a fresh connection, and the API serves normally again by itself once the kills stop.

    .venv/bin/python -m pytest tests/api/test_api_db_outage.py -q
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter

import httpx
import uvicorn
from api_helpers import auth, owner_headers
from sqlalchemy import create_engine, text

from api.main import create_app

KILL_EVERY_S = 0.1
DURATION_S = 4.0


@contextlib.contextmanager
def serving(app):
    """``app`` on a free loopback port in a background thread; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def kill_connections(admin, stop: threading.Event, killed: list[int]) -> None:
    """Terminate every other session on the test database, again and again, until ``stop``."""
    while not stop.is_set():
        with admin.connect() as conn:
            killed.append(
                conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            )
        stop.wait(KILL_EVERY_S)


def hammer(base: str, headers: dict, gen_id: str, stop: threading.Event, results: list) -> None:
    requests = [
        ("GET", "/v1/trainings?limit=50", None),
        ("GET", f"/v1/generations/{gen_id}", None),
        ("GET", "/v1/generations?limit=50", None),
        ("POST", "/v1/generations", {"prompt": "p", "steps": 2}),
    ]
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        i = 0
        while not stop.is_set():
            method, path, body = requests[i % len(requests)]
            i += 1
            try:
                r = http.request(method, path, json=body)
                results.append(
                    (
                        method,
                        r.status_code,
                        r.headers.get("retry-after"),
                        r.headers.get("content-type"),
                        r.text[:300],
                    )
                )
            except httpx.HTTPError as e:  # a reset or a dropped connection: what must not happen
                results.append((method, type(e).__name__, None, None, str(e)))


def test_connections_killed_in_flight_answer_503_or_succeed_and_the_api_recovers(settings, app, Session, pg_url):
    owner = owner_headers(Session, "gina")
    outage_app = create_app(settings, enqueuer=app.state.enqueuer)
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with serving(outage_app) as base:
        with httpx.Client(base_url=base, headers=auth(owner), timeout=30) as http:
            gen_id = http.post("/v1/generations", json={"prompt": "p", "steps": 2}).json()["id"]
            stop, results, killed = threading.Event(), [], []
            threads = [
                threading.Thread(target=hammer, args=(base, auth(owner), gen_id, stop, results)) for _ in range(4)
            ]
            threads.append(threading.Thread(target=kill_connections, args=(admin, stop, killed)))
            for t in threads:
                t.start()
            time.sleep(DURATION_S)
            stop.set()
            for t in threads:
                t.join(60)
            after = [http.get("/v1/trainings").status_code for _ in range(5)] + [
                http.post("/v1/generations", json={"prompt": "p", "steps": 2}).status_code for _ in range(5)
            ]
    admin.dispose()
    outage_app.state.sessions.kw["bind"].dispose()

    statuses = Counter((m, s) for m, s, *_ in results)
    print(f"\n{len(results)} requests, {sum(killed)} backends terminated: {dict(statuses)}")
    assert sum(killed) > 0 and len(results) > 40
    assert any(r[1] == 503 for r in results), "no request was in flight when its connection died: nothing tested"
    bad = [r for r in results if r[1] not in (200, 202, 503)]
    assert bad == [], bad[:5]
    for method, status, retry_after, content_type, body in results:
        if status == 503:
            assert retry_after and content_type == "application/json" and '"code":"unavailable"' in body, body
    assert after == [200] * 5 + [202] * 5  # recovered by itself


def test_an_event_stream_that_loses_its_database_ends_with_an_error_event(settings, app):
    """A blip is retried by the stream itself; a database that is gone ends it with the one error shape, not a
    cut connection. The database here is one of its own, dropped mid-stream."""
    import json

    from fastapi.testclient import TestClient

    from db.generations import create_generation
    from db.migrate import upgrade
    from db.testing import DEFAULT_ADMIN_URL, temporary_postgres

    with temporary_postgres() as url:
        upgrade(url)
        doomed = create_app(settings.model_copy(update={"database_url": url}), enqueuer=app.state.enqueuer)
        with doomed.state.sessions() as s:
            owner = owner_headers(doomed.state.sessions, "hal")
            gen = create_generation(
                s, owner_id=owner["owner_id"], prompt="p", params={}, num_images=1, total_steps=2
            )
        events = []
        with (
            TestClient(doomed) as c,
            c.stream("GET", f"/v1/generations/{gen.id}/events", headers=auth(owner)) as r,
        ):
            assert r.status_code == 200
            name = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                    if name == "snapshot" and not events:
                        admin = create_engine(DEFAULT_ADMIN_URL, isolation_level="AUTOCOMMIT")
                        with admin.connect() as conn:
                            conn.execute(text(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
                        admin.dispose()
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
        doomed.state.sessions.kw["bind"].dispose()
    assert events[0][0] == "snapshot" and events[-1][0] == "error"
    assert events[-1][1]["error"]["code"] == "unavailable"
