# chatsite — `make run` serves the site, `make test` checks everything.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
TOOLS := $(VENV)/tools
HOST ?= 127.0.0.1
PORT ?= 8000
PG_TEST_URL ?= postgres://postgres@127.0.0.1:5432/test
# Browser tests drive the system's Chromium; Playwright must never fetch its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

# Finds an interpreter >= 3.12: $PYTHON, python3.14..python3.12, python3, then
# pyenv-installed versions. Each candidate must actually run (pyenv shims exist
# for versions that are not selected and fail when called).
define FIND_PYTHON
ok() { "$$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }; \
for c in "$${PYTHON:-}" python3.14 python3.13 python3.12 python3; do \
  [ -n "$$c" ] && command -v "$$c" >/dev/null 2>&1 && ok "$$c" && { command -v "$$c"; exit 0; }; \
done; \
if command -v pyenv >/dev/null 2>&1; then \
  root=$$(pyenv root); \
  for v in $$(pyenv versions --bare 2>/dev/null | sort -rV); do \
    p="$$root/versions/$$v/bin/python3"; [ -x "$$p" ] && ok "$$p" && { echo "$$p"; exit 0; }; \
  done; \
fi; \
echo "chatsite needs Python 3.12 or newer. Install python3.13 (Debian 13: apt-get install python3.13 python3.13-venv; elsewhere pyenv install 3.13) or set PYTHON=/path/to/python3.13." >&2; \
exit 1
endef

.PHONY: help
help:
	@echo "make run    - install runtime deps into .venv, migrate, serve http://$(HOST):$(PORT)"
	@echo "make test   - install dev deps, ruff (format + lint), pytest on SQLite and PostgreSQL"
	@echo "make lint   - ruff format check and lint only"
	@echo "make format - apply ruff formatting and safe fixes"
	@echo "make emulator - the Azure Agents emulator on 127.0.0.1:8765"
	@echo "make fuzz   - schemathesis, 2,000+ cases; make soak - 500 streams for 60 s"
	@echo "make bench  - relay benchmark vs the old FastAPI relay (~15 min); make bench-quick ~1.5 min"

$(PY):
	@py=$$($(FIND_PYTHON)) || exit 1; \
	echo "Creating $(VENV) with $$py ($$($$py --version))"; \
	"$$py" -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

$(VENV)/.dev: requirements-dev.txt requirements.txt | $(PY)
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@ $(VENV)/.runtime

# The SSE client libraries chat/tests/test_clients.py runs under node.
$(VENV)/.clients: testing/clients/package.json testing/clients/package-lock.json | $(PY)
	npm ci --prefix testing/clients --no-audit --no-fund
	@touch $@

# checkov pins packaging<24 (pytest needs >=24), so it gets a venv of its own.
$(TOOLS)/.installed: requirements-tools.txt | $(PY)
	$(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q -r requirements-tools.txt
	@touch $@

var:
	@mkdir -p var

.PHONY: install install-dev
install: $(VENV)/.runtime var
install-dev: $(VENV)/.dev $(VENV)/.clients $(TOOLS)/.installed var

# With debug off, pages name static files by the hashed names in the manifest that
# collectstatic writes (the image build runs it too). uvicorn's flags are the
# image's (Dockerfile): bounded request heads, no proxy headers, no server header.
.PHONY: run
# CHAT_TOOLS is the example tool unless set (even empty): "search posts for …"
# shows the offline agent calling it.
run: install
	@if [ "$$(DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(PY) -c 'from chatsite import settings; print(settings.DEBUG)' 2>/dev/null)" = False ]; then \
	  echo "DJANGO_DEBUG is off: collecting static files into staticfiles/"; \
	  $(PY) manage.py collectstatic --noinput -v 0 || exit 1; \
	fi
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(PY) manage.py migrate --noinput -v 0
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} CHAT_TOOLS=$${CHAT_TOOLS-posts.tools.search_posts} \
	  $(VENV)/bin/uvicorn chatsite.asgi:application \
	  --host $(HOST) --port $(PORT) --loop chatsite.serving:new_event_loop \
	  --backlog 4096 --http chatsite.serving:HttpToolsProtocol \
	  --no-proxy-headers --no-server-header --no-access-log \
	  --timeout-graceful-shutdown 20

.PHONY: emulator
emulator: install
	$(PY) -m emulator --port $${EMULATOR_PORT:-8765}

$(VENV)/.bench: bench/requirements.txt requirements.txt | $(PY)
	$(PY) -m pip install -q -r bench/requirements.txt
	@touch $@

# Not a test: timings depend on the machine. DATABASE_URL=postgres://... for PostgreSQL.
.PHONY: bench bench-quick
bench: install $(VENV)/.bench
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: install $(VENV)/.bench
	$(PY) bench/run.py --quick $(BENCH_ARGS)

# At least 2,000 schemathesis cases over every operation (make test runs a small,
# fixed-seed budget of the same).
.PHONY: fuzz
fuzz: install-dev
	$(PY) -m tools.fuzz $(FUZZ_ARGS)

# 500 concurrent streams for 60 s against uvicorn, the emulator and PostgreSQL.
.PHONY: soak
soak: install $(VENV)/.bench
	$(PY) bench/soak.py $(SOAK_ARGS)

.PHONY: lint
lint: install-dev
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

.PHONY: format
format: install-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The suite runs on SQLite, then on PostgreSQL when it answers. Under CI=true a
# missing PostgreSQL fails the run instead of being skipped. Two pytest-xdist
# workers take a module at a time each (most tests wait on servers they started);
# the cluster tests, which share one Redis database and a PostgreSQL server's
# scratch databases, run after them on their own. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)
.PHONY: test
test: lint
	$(VENV)/bin/pytest -m "not cluster" $(XDIST) $(PYTEST_ARGS)
	@# Exit status 5: PYTEST_ARGS selected no test of the pass.
	$(VENV)/bin/pytest -m cluster $(PYTEST_ARGS) || [ $$? -eq 5 ]
	@if $(PY) -c "import psycopg,sys; psycopg.connect('$(PG_TEST_URL)', connect_timeout=3).close()" 2>/dev/null; then \
	  echo "== PostgreSQL: $(PG_TEST_URL)"; \
	  DATABASE_URL=$(PG_TEST_URL) $(VENV)/bin/pytest -m "not browser and not deploy and not cluster and not no_database" $(XDIST) $(PYTEST_ARGS) || [ $$? -eq 5 ]; \
	elif [ "$${CI:-}" = "true" ]; then \
	  echo "PostgreSQL at $(PG_TEST_URL) is not reachable, and CI=true requires it." >&2; exit 1; \
	else \
	  echo "== PostgreSQL not reachable at $(PG_TEST_URL): skipped the PostgreSQL run."; \
	fi
