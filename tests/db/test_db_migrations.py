"""Migrations build the schema on empty SQLite and PostgreSQL databases, match the models, and downgrade.

.venv/bin/python -m pytest tests/db/test_db_migrations.py -q
"""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from db.migrate import alembic_config, upgrade
from db.models import Base
from db.session import make_engine
from db.testing import temporary_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        with temporary_postgres() as url:
            yield url


def test_upgrade_head_matches_models_and_downgrades(empty_url):
    upgrade(empty_url)
    engine = make_engine(empty_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "render_as_batch": True})
            head = ScriptDirectory.from_config(alembic_config(empty_url)).get_current_head()
            assert ctx.get_current_revision() == head
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        # Named constraints (batch mode on SQLite needs them): every foreign key has our conventional name.
        fks = inspect(engine).get_foreign_keys("training_jobs")
        assert {fk["name"] for fk in fks} >= {
            "fk_training_jobs_owner_id_owners",
            "fk_training_jobs_dataset_id_datasets",
        }

        command.downgrade(alembic_config(empty_url), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(empty_url)  # and back up again: the history is replayable
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
