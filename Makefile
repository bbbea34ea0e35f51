# sso-sidecar — see README.md.  make install | demo | test | test-image | lint | bench | bench-compare
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
IDP := deploy/dev-idp
CHECKOV := .venv-checkov
IMAGE ?= localhost/sso-sidecar:dev

.PHONY: install node system-deps image-deps checkov demo test test-image lint format bench bench-compare clean

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

# podman and debootstrap for the image tests; installed in one apt-get call when any is missing.
image-deps:
	@scripts/require.sh image-deps

# checkov in a virtualenv of its own: it is slow to install and pins dependencies the project also uses.
checkov: $(CHECKOV)/.installed

$(CHECKOV)/.installed:
	@scripts/require.sh python
	$(PYTHON) -m venv $(CHECKOV)
	$(CHECKOV)/bin/pip install --quiet 'checkov==3.3.30'
	@touch $@

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

# The container image: built with podman on a stand-in base (scripts/image.sh), then run as containers and
# as a `podman kube play` pod, and checkov on the manifests (tests/image). Takes minutes; not part of `test`.
test-image: install node system-deps image-deps checkov
	scripts/image.sh build $(IMAGE)
	SSO_SIDECAR_IMAGE=$(IMAGE) $(BIN)/pytest -q tests/image

bench: install node system-deps
	$(BIN)/python bench/run.py

# The working tree's sidecar variants against BASELINE's (a git ref or another checkout), interleaved in
# one run: new/old req/s must stay >= 0.95. HEAD = the last commit, i.e. your uncommitted change.
BASELINE ?= HEAD
bench-compare: install node system-deps
	$(BIN)/python bench/run.py --baseline $(BASELINE) --only sidecars

clean:
	rm -rf $(VENV) $(CHECKOV) $(IDP)/node_modules .mypy_cache .ruff_cache .pytest_cache
