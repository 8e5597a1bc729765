# Every target sets up .venv on first use: a fresh machine needs only `make serve` or `make test`.
PY := .venv/bin/python

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q -e '.[dev]'
	touch $@

.PHONY: serve test test-slow test-all demo schemathesis browser lint format
serve: .venv/.installed  ## the whole service on its embedded default (SQLite, bundled broker, bundled model)
	$(PY) -m ops.embedded

test: .venv/.installed browser  ## the default suite (< 15 min on 2 cores)
	$(PY) -m pytest -q

test-slow: .venv/.installed  ## the long CPU tests only
	$(PY) -m pytest -q -m slow

test-all: .venv/.installed browser
	$(PY) -m pytest -q -m 'not gpu'

demo: .venv/.installed  ## service + shaded-style LoRA end to end, scored: runs/demo/grid.png, scores.json
	$(PY) -m ops.demo

lint: .venv/.installed  ## ruff: pyflakes + pycodestyle + import order, and the formatter's check (pyproject [tool.ruff])
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: .venv/.installed  ## apply ruff's fixes and formatting
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

browser:  ## headless Chromium + chromium-driver for tests/web (apt; a no-op when present)
	.ci/install-browser

schemathesis: .venv/.installed  ## fuzz the API from its OpenAPI document (loopback, temp SQLite; about 5 min)
	$(PY) tests/api/schemathesis_run.py --max-examples 15 --max-time 300
