"""Liveness check for a worker container: can this process reach the broker, the database and the store?

    python -m ops.health        # exit 0 when all answer, 1 (with the reasons on stderr) otherwise

`celery inspect ping` only shows that the worker's event loop runs; this asks the three services a worker cannot
work without, from the worker's own container and settings.
"""

from __future__ import annotations

import sys

import redis
from sqlalchemy import text

from db.session import make_engine
from service.settings import Settings, get_settings
from service.stores import make_store


def check(s: Settings | None = None) -> list[str]:
    """The problems found; empty when healthy."""
    s = s or get_settings()
    problems = []
    try:
        redis.Redis.from_url(s.broker_url, socket_timeout=5, socket_connect_timeout=5).ping()
    except Exception as e:
        problems.append(f"broker: {e}")  # no URL: it may hold a password
    engine = make_engine(s.resolved_database_url)
    try:
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
    except Exception as e:
        problems.append(f"database: {e}")
    finally:
        engine.dispose()
    try:
        if s.store_location is not None:  # a local folder is there or made at the first write
            make_store(s).check()
    except Exception as e:
        problems.append(f"store: {type(e).__name__}: {e}")
    return problems


if __name__ == "__main__":
    found = check()
    for p in found:
        print(p, file=sys.stderr)
    sys.exit(1 if found else 0)
