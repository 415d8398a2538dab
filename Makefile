# deliberate: every target sets itself up on a fresh machine (Python 3.11+ and make).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 5000
STAMP := $(VENV)/.installed
E2E_NODE := tests/e2e/node_modules/axe-core/axe.min.js

.PHONY: run serve test test-fast bench lint format migration clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev,postgres]'
	@touch $(STAMP)

$(E2E_NODE): tests/e2e/package.json tests/e2e/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: end-to-end accessibility checks will be skipped"; fi

## run: create the environment and the database, load the demo coalition, serve on 127.0.0.1:$(PORT)
run: $(STAMP)
	DELIBERATE_ENV=development $(VENV)/bin/deliberate db upgrade
	DELIBERATE_ENV=development $(VENV)/bin/deliberate demo --if-empty
	DELIBERATE_ENV=development OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(VENV)/bin/gunicorn --bind 127.0.0.1:$(PORT) \
	  --workers 1 --threads 8 --access-logfile - 'wsgi:app'

## test: create the environment and run the whole suite
test: $(STAMP) $(E2E_NODE)
	$(PY) -m pytest -n 2 --dist loadgroup

## test-fast: everything but the browser tests
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -m "not e2e"

## bench: the analysis benchmark (see bench/README.md)
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/analysis.py

lint: $(STAMP)
	$(VENV)/bin/ruff check deliberate tests bench
	$(VENV)/bin/ruff format --check deliberate tests bench

format: $(STAMP)
	$(VENV)/bin/ruff format deliberate tests bench
	$(VENV)/bin/ruff check --fix deliberate tests bench

## migration: regenerate the initial migration from the models (before the first release only)
migration: $(STAMP)
	$(PY) scripts/regenerate_migration.py

clean:
	rm -rf $(VENV) tests/e2e/node_modules .pytest_cache
