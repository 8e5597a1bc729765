"""Bring a database to the newest schema (the embedded launcher and tests call this; so can you):

.venv/bin/python -m db.migrate [DATABASE_URL]      # default: the settings' database
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

REPO = Path(__file__).resolve().parents[1]


def alembic_config(url: str) -> Config:
    cfg = Config(str(REPO / "alembic.ini"))
    cfg.set_main_option("script_location", str(REPO / "migrations"))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        target = sys.argv[1]
    else:
        from service.settings import get_settings

        target = get_settings().resolved_database_url
    upgrade(target)
    print(f"database at head: {target.split('@')[-1]}")
