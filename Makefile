# deliberate: every target sets itself up on a fresh machine (Python 3.11+ and make).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 5000
STAMP := $(VENV)/.installed
E2E_NODE := tests/e2e/node_modules/axe-core/axe.min.js

HOST ?= 127.0.0.1
BIND ?= $(HOST):$(PORT)
WORKER_PROCESSES ?= 1

.PHONY: run serve worker test test-fast bench lint format migration clean

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

# The production secret key (serve, worker): DELIBERATE_SECRET_KEY from the environment, else
# instance/secret_key, created once with mode 0600. Every process must use the same key.
SECRET_KEY_SETUP = if [ -z "$$DELIBERATE_SECRET_KEY" ]; then \
	  if [ ! -s instance/secret_key ]; then \
	    mkdir -p instance && (umask 077 && $(PY) -c 'import secrets; print(secrets.token_hex(32))' \
	      > instance/secret_key) && echo "make: created instance/secret_key (mode 0600)" >&2; \
	  fi; \
	  DELIBERATE_SECRET_KEY=$$(cat instance/secret_key); export DELIBERATE_SECRET_KEY; \
	fi; export DELIBERATE_ENV=production

## serve: production: migrate the database once, then gunicorn on $(BIND), 2 processes x 4
##   threads (deliberate/serving.py; docs/operations.md). DELIBERATE_ANALYSIS_WORKER=off to
##   leave the analysis to `make worker`
serve: $(STAMP)
	@$(SECRET_KEY_SETUP); \
	$(VENV)/bin/deliberate db upgrade && \
	exec $(VENV)/bin/gunicorn -c python:deliberate.serving --bind $(BIND) wsgi:app

## worker: the analysis worker as its own process(es), WORKER_PROCESSES of them (default 1)
worker: $(STAMP)
	@$(SECRET_KEY_SETUP); \
	exec $(VENV)/bin/deliberate worker --processes $(WORKER_PROCESSES)

## test: create the environment and run the whole suite on SQLite; then, when
##   DELIBERATE_TEST_POSTGRES_URL is set (postgresql+psycopg://user:pw@host:port/db, role with
##   CREATEDB), a second pass on that PostgreSQL server without the browser (e2e) tests
test: $(STAMP) $(E2E_NODE)
	@start=$$(date +%s); \
	env -u DELIBERATE_TEST_DATABASE_URL $(PY) -m pytest -n 2 --dist loadgroup || exit 1; \
	echo "SQLite pass: $$(( $$(date +%s) - start )) s"
	@if [ -n "$$DELIBERATE_TEST_POSTGRES_URL" ]; then \
	  echo "== second pass: the suite on PostgreSQL (not e2e) =="; start=$$(date +%s); \
	  DELIBERATE_TEST_DATABASE_URL="$$DELIBERATE_TEST_POSTGRES_URL" \
	    $(PY) -m pytest -n 2 --dist loadgroup -m "not e2e" || exit 1; \
	  echo "PostgreSQL pass: $$(( $$(date +%s) - start )) s"; \
	else \
	  echo "note: DELIBERATE_TEST_POSTGRES_URL is not set, so the PostgreSQL pass was skipped"; \
	  echo "      (README, section PostgreSQL; .ci/run starts a server and sets it)"; \
	fi

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
