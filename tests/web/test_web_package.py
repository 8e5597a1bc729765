"""A non-editable install serves the page only if every file under api/web/ is package data."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_page_file_is_package_data():
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["api"]
    files = [p.relative_to(REPO / "api").as_posix() for p in (REPO / "api" / "web").rglob("*") if p.is_file()]
    assert "web/index.html" in files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not missing, f"add these to [tool.setuptools.package-data] api in pyproject.toml: {missing}"
