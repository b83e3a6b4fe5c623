# The two commands a newcomer needs:  make run  and  make test.
VENV := .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run test test-postgres lint format install install-dev

run: $(VENV)/.installed
	$(BIN)/python manage.py migrate --noinput
	@echo "sdsite: open http://127.0.0.1:$${SDSITE_PORT:-8000}/  (Ctrl-C stops the web server and the worker)"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m sdsite.procfile start -f Procfile 2>&1 || true

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The same suite on a throwaway PostgreSQL 15 cluster (server binaries required).
test-postgres: $(VENV)/.installed-dev
	bin/with-postgres $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-nodeps.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-nodeps.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	touch $(VENV)/.installed $@
