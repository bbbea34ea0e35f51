# sso-sidecar — see README.md.  make install | demo | test | test-unit | test-image | lint | bench | bench-compare | lock
SHELL := /bin/bash
# The venv's interpreter: Debian 12's python3.11 where this machine has it (the interpreter of the image's stand-in
# base; like the official python:3.11-slim image's, an optimised build), so that the tests and `make bench` run the
# sidecar on the kind of interpreter that is deployed; python3 from PATH elsewhere, or `make install PYTHON=...`.
# docs/performance.md (the interpreter): the same code is ~15 % faster on it than on a build without optimisations.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3.11) python3)
export PYTHON
VENV := .venv
BIN := $(VENV)/bin
IDP := deploy/dev-idp
CHECKOV := .venv-checkov
IMAGE ?= localhost/sso-sidecar:dev
# The lock: every package the venv holds, with its hashes (requirements/README.md). image.txt is its runtime
# part for the Dockerfile, checkov.txt checkov's own venv.
LOCK := requirements/dev.txt

.PHONY: install node system-deps image-deps checkov demo test test-unit test-image lint format bench bench-compare lock clean

install: $(VENV)/.installed

# A venv made from another interpreter than $(PYTHON) is made anew too (its packages are built for that one).
PYTHON_EXE := $(realpath $(shell $(PYTHON) -c 'import sys; print(sys.executable)' 2>/dev/null))
ifneq ($(realpath $(VENV)/bin/python),$(PYTHON_EXE))
$(VENV)/.installed: .FORCE
endif
ifneq ($(realpath $(CHECKOV)/bin/python),$(PYTHON_EXE))
$(CHECKOV)/.installed: .FORCE
endif
.PHONY: .FORCE

# The venv holds exactly the lock: it is made anew whenever the lock changes, since installing over an old
# venv would keep what a new lock dropped. pip checks every file's hash and refuses anything not in the lock.
$(VENV)/.installed: $(LOCK) pyproject.toml
	@scripts/require.sh python
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	@# PYTHONWARNINGS: setuptools' notice that an editable install imports from the checkout (it does, on purpose).
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
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

$(CHECKOV)/.installed: requirements/checkov.txt
	@scripts/require.sh python
	rm -rf $(CHECKOV)
	$(PYTHON) -m venv $(CHECKOV)
	$(CHECKOV)/bin/pip install --quiet --require-hashes -r requirements/checkov.txt
	@touch $@

demo: install node
	$(BIN)/python deploy/demo/run_demo.py

# `sso-sidecar check` on config/demo.yaml with what `make demo` gives its sidecar (the cookie secret kept in .demo/,
# the page's state there, a break-glass token): run it while `make demo` runs in another terminal.
.PHONY: check-demo
check-demo: install
	$(BIN)/python deploy/demo/run_demo.py --check

# lint-imports: the layer rule and no import cycles (pyproject.toml [tool.importlinter], docs/ARCHITECTURE.md).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache --no-logo

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The whole suite, every tier (CONTRIBUTING.md): unit, component, system, adversarial, deploy.
test: install node system-deps lint
	$(BIN)/pytest -q -n auto --maxprocesses 4 --dist loadfile

# The fast tier alone: pure, in-process tests (tests/unit), seconds.
test-unit: install
	$(BIN)/pytest -q tests/unit

# The container image: built with podman on a stand-in base (scripts/image.sh), then run as containers and
# as a `podman kube play` pod, and checkov on the manifests (tests/deploy/image). Takes minutes; not part of `test`.
test-image: install node system-deps image-deps checkov
	scripts/image.sh build $(IMAGE)
	SSO_SIDECAR_IMAGE=$(IMAGE) $(BIN)/pytest -q tests/deploy/image

bench: install node system-deps
	$(BIN)/python bench/run.py

# The working tree's sidecar variants against BASELINE's (a git ref or another checkout), interleaved in
# one run: new/old req/s must stay >= 0.95. HEAD = the last commit, i.e. your uncommitted change.
# BENCH_ARGS=--identity runs the session sidecars with `assertion: {}` and `roles` (bench/README.md).
BASELINE ?= HEAD
BENCH_ARGS ?=
bench-compare: install node system-deps
	$(BIN)/python bench/run.py --baseline $(BASELINE) --only sidecars $(BENCH_ARGS)

# Upgrade the locks on purpose (requirements/README.md): every package to the newest release pyproject.toml and
# requirements/*.in allow. UPGRADE=redis (or "redis aiohttp") upgrades only those; UPGRADE=none re-resolves
# after an edit of pyproject.toml, keeping every pin it can. Then: make test, make test-image, commit requirements/.
UPGRADE ?= all
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock'
UPGRADE_FLAGS = $(if $(filter all,$(UPGRADE)),--upgrade,$(if $(filter none,$(UPGRADE)),,$(addprefix --upgrade-package ,$(UPGRADE))))
lock: install
	$(UV_COMPILE) $(UPGRADE_FLAGS) --extra dev -o $(LOCK) pyproject.toml requirements/tools.in
	$(UV_COMPILE) --constraint $(LOCK) -o requirements/image.txt pyproject.toml requirements/tools.in
	$(UV_COMPILE) $(UPGRADE_FLAGS) -o requirements/checkov.txt requirements/checkov.in
	@git diff --stat -- requirements/ 2>/dev/null || true

clean:
	rm -rf $(VENV) $(CHECKOV) $(IDP)/node_modules .mypy_cache .ruff_cache .pytest_cache
