"""Fixtures: a migrated database on SQLite and on the real local PostgreSQL, one fresh per test module."""

from __future__ import annotations

import pytest

from db.migrate import upgrade
from db.session import make_sessionmaker
from db.testing import temporary_postgres


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.db'}"
        upgrade(url)
        yield url
    else:
        with temporary_postgres() as url:
            upgrade(url)
            yield url


@pytest.fixture(scope="module")
def Session(db_url):
    maker = make_sessionmaker(db_url)
    yield maker
    maker.kw["bind"].dispose()


@pytest.fixture
def session(Session):
    with Session() as s:
        yield s
