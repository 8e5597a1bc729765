"""Settings: embedded defaults, env overrides, placeholder secrets refused outside development.

.venv/bin/python -m pytest tests/service/test_service_settings.py -q
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_defaults_are_embedded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no .env here
    s = Settings(data_dir=tmp_path / "d")
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'd' / 'o1lora.db'}"
    assert s.resolved_artifact_dir == tmp_path / "d" / "artifacts"
    assert s.resolved_redis_url == s.broker_url


def test_env_overrides(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("O1LORA_DATABASE_URL", "postgresql+psycopg://u:pw@db/x")
    monkeypatch.setenv("O1LORA_MAX_UPLOAD_FILE_BYTES", "123")
    s = Settings()
    assert s.resolved_database_url == "postgresql+psycopg://u:pw@db/x" and s.max_upload_file_bytes == 123


def test_placeholder_password_refused_in_production_only(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    url = "postgresql+psycopg://o1lora:changethis@db/o1lora"
    assert Settings(database_url=url).env == "development"
    with pytest.raises(ValidationError, match="O1LORA_DATABASE_URL uses the placeholder password"):
        Settings(database_url=url, env="production")
    assert Settings(database_url=url.replace("changethis", "s3cr3t-9f2"), env="production")
