"""The embedded launcher's first-start steps: which model it runs, and the API key it keeps."""

from __future__ import annotations

from db.migrate import upgrade
from db.owners import owner_for_key
from db.session import make_sessionmaker
from ops import embedded


def test_model_choice_configured_then_bundled_then_tiny_random(tmp_path, monkeypatch, tiny_model):
    assert embedded.ensure_model(tiny_model, tmp_path) == tiny_model
    monkeypatch.setattr(embedded, "BUNDLED", tiny_model)
    assert embedded.ensure_model(tmp_path / "missing", tmp_path) == tiny_model
    monkeypatch.setattr(embedded, "BUNDLED", tmp_path / "no-bundle")
    made = embedded.ensure_model(tmp_path / "missing", tmp_path / "data")
    assert made == (tmp_path / "data" / "models" / "o1-tiny-random").resolve()
    assert (made / "config.json").is_file() and (made / "tokenizer.json").is_file()
    mtime = (made / "config.json").stat().st_mtime
    assert embedded.ensure_model(tmp_path / "missing", tmp_path / "data") == made  # written once
    assert (made / "config.json").stat().st_mtime == mtime


def test_api_key_is_created_once_kept_and_replaced_when_revoked(tmp_path):
    url = f"sqlite:///{tmp_path / 'o1lora.db'}"
    upgrade(url)
    key = embedded.ensure_api_key(url, tmp_path)
    assert embedded.ensure_api_key(url, tmp_path) == key
    assert (tmp_path / "api_key").stat().st_mode & 0o777 == 0o600
    maker = make_sessionmaker(url)
    with maker() as s:
        assert owner_for_key(s, key=key).name == "default"
    (tmp_path / "api_key").write_text("o1l_not-a-valid-key\n")  # a stale file (another database)
    new = embedded.ensure_api_key(url, tmp_path)
    assert new != key
    with maker() as s:
        assert owner_for_key(s, key=new).name == "default"  # the same owner, a new key
    maker.kw["bind"].dispose()
