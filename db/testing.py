"""Throwaway databases for tests (ours and the worker's): a uniquely named PostgreSQL database, dropped after.

    with temporary_postgres("postgresql+psycopg://postgres@127.0.0.1:5432/test") as url:
        upgrade(url); ...

The server must be running: a missing server raises (tests that need it fail loudly, they never skip).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

# The admin URL: any database on the server the test user can connect to and create databases from.
DEFAULT_ADMIN_URL = os.environ.get("O1LORA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def temporary_postgres(admin_url: str = DEFAULT_ADMIN_URL) -> Iterator[str]:
    """Create ``o1lora_test_<random>`` next to ``admin_url``'s database, yield its URL, drop it afterwards."""
    name = f"o1lora_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        admin.dispose()
        raise RuntimeError(
            f"PostgreSQL for tests is not reachable at {admin_url} (set O1LORA_TEST_POSTGRES_URL): {e}"
        ) from e
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
