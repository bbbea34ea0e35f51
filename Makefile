# sso-sidecar — see README.md.  make install | demo | test | lint | bench | bench-compare
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
IDP := deploy/dev-idp

.PHONY: install node system-deps demo test lint format bench bench-compare clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@scripts/require.sh python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

node: $(IDP)/node_modules/.installed

$(IDP)/node_modules/.installed: $(IDP)/package.json $(IDP)/package-lock.json
	@scripts/require.sh node
	cd $(IDP) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Debian packages the tests use; installed in one apt-get call when any is missing.
system-deps:
	@scripts/require.sh system-deps

demo: install node
	$(BIN)/python deploy/demo/run_demo.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install node system-deps lint
	$(BIN)/pytest -q

bench: install node system-deps
	$(BIN)/python bench/run.py

# The working tree's sidecar variants against BASELINE's (a git ref or another checkout), interleaved in
# one run: new/old req/s must stay >= 0.95. HEAD = the last commit, i.e. your uncommitted change.
BASELINE ?= HEAD
bench-compare: install node system-deps
	$(BIN)/python bench/run.py --baseline $(BASELINE) --only sidecars

clean:
	rm -rf $(VENV) $(IDP)/node_modules .mypy_cache .ruff_cache .pytest_cache
