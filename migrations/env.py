"""Alembic environment: one migration history for SQLite and PostgreSQL.

URL, first found: ``-x url=...``, ``config.attributes["url"]`` (db.migrate.upgrade), ``sqlalchemy.url`` in the
ini, then service.settings. render_as_batch lets ALTERs run on SQLite (copy-and-move of the table).
"""

from __future__ import annotations

from alembic import context

from db.models import Base, UTCDateTime
from db.session import make_engine

config = context.config


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.attributes.get("url")
        or config.get_main_option("sqlalchemy.url")
    )
    if url:
        return url
    from service.settings import get_settings

    return get_settings().resolved_database_url


def render_item(type_, obj, autogen_context):
    # Migrations must not import app code: our UTC wrapper is a plain DateTime in the schema.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def _configure(**kw) -> None:
    context.configure(
        target_metadata=Base.metadata, render_as_batch=True, compare_type=True, render_item=render_item, **kw
    )


if context.is_offline_mode():
    _configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:  # handed in by a caller that already holds one (tests comparing metadata)
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    else:
        engine = make_engine(_url())
        with engine.connect() as connection:
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
        engine.dispose()
