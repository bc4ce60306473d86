# JetStream Bus Lab
#   make lab    set up .venv, then open JupyterLab on lesson 00 (embedded server, or $NATS_URL)
#   make test   set up .venv, then run every test: unit, integration, browser, notebooks, lint
# Needs only Python 3.10+ and GNU make (Linux, macOS). Windows: see README.md.

PYTHON   ?= python3
PORT     ?= 8888
LAB_ARGS ?=
PYTEST_ARGS ?=
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
# Lessons and exercise solutions run under nbval; an absent folder just adds nothing.
NOTEBOOKS = $(wildcard notebooks/*.ipynb exercises/solutions/*.ipynb)
# The bus's own tests, run again on nats-server 2.11, with the fast paths off, and on the
# lowest nats-py that pyproject.toml allows (in a second venv).
BUS_TESTS = tests/test_bus_publish.py tests/test_bus_subscribe.py tests/test_bus_failures.py \
            tests/test_bus_resilience.py tests/test_settlement.py tests/test_tracing.py tests/test_dlq_bus.py \
            tests/test_partitions.py tests/test_retention.py tests/test_concurrency.py tests/test_outbox.py \
            tests/test_lag.py tests/test_bus_fuzz.py
# Workshop isolation and credentials, proven again on the oldest server (accounts, imports, limits),
# and a room on a cluster (a lost node: the board reads on, learners keep working).
WORKSHOP_TESTS = tests/test_workshop_isolation.py tests/test_workshop_auth.py tests/test_workshop_cluster.py
LOWEST   := .venv-lowest
# EmbeddedCluster and the bus on a cluster: run again on nats-server 2.11 as well.
CLUSTER_TESTS = tests/test_cluster.py tests/test_cluster_bus.py
# make soak: what runs RUNS times (the lessons, the exercise solutions, the bus and server tests)
RUNS     ?= 10
SOAK_TESTS = $(NOTEBOOKS) $(BUS_TESTS) tests/test_dlq.py tests/test_dlq_invariant.py \
             tests/test_server.py tests/test_server_211.py tests/test_connection.py
# Jupyter refuses to run as root unless told; only say so when we are root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.DEFAULT_GOAL := help
.PHONY: help setup lab test lint soak bench clean distclean

help:  ## show this list
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  options: PYTHON=$(PYTHON) PORT=$(PORT) LAB_ARGS=--no-browser PYTEST_ARGS='-x -k server'"
	@echo "  NATS_URL=nats://host:4222 make lab   uses that server instead of the embedded one"

# The venv, made once with a Python that is new enough.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || { \
	  echo "error: JetStream Bus Lab needs Python 3.10 or newer, but '$(PYTHON)' is" \
	       "$$($(PYTHON) --version 2>&1 || echo 'not installed')." >&2; \
	  echo "  Install Python 3.10+ and run, e.g.: make lab PYTHON=python3.12" >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "error: '$(PYTHON) -m venv' failed. On Debian/Ubuntu: sudo apt install python3-venv" >&2; exit 1; }

# The kit and its test tools, reinstalled only when pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	@echo "Installing the kit into $(VENV) (the first time takes a few minutes)..."
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@# No "Would you like to get notified about Jupyter news?" popup for learners:
	@mkdir -p $(VENV)/share/jupyter/lab/settings
	@echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' \
	  > $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $@

setup: $(STAMP)  ## create or update .venv (make lab and make test do it for you)

lab: setup  ## open JupyterLab on lesson 00 (PORT=8888, LAB_ARGS=--no-browser)
	$(BIN)/jupyter lab --ip 127.0.0.1 --port $(PORT) $(ALLOW_ROOT) \
	  --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks/00_start_here.ipynb $(LAB_ARGS)

test: lint $(LOWEST)/.installed  ## lint, every test (browser and notebooks included), contracts check
	$(BIN)/python -m pytest tests $(NOTEBOOKS) --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg $(PYTEST_ARGS)
	@# --- contracts: the CI gate, fails when a contract changed incompatibly with contracts/ ---
	$(BIN)/buslib contracts check
	@# --- the bus, workshop isolation and the cluster (lesson 06) again on nats-server 2.11, the oldest a learner's wheel brings ---
	$(BIN)/python tests/old_server.py > $(VENV)/.server-2.11-path
	BUSLIB_NATS_SERVER="$$(cat $(VENV)/.server-2.11-path)" $(BIN)/python -m pytest $(BUS_TESTS) $(WORKSHOP_TESTS) $(CLUSTER_TESTS) -q $(PYTEST_ARGS)
	@# --- the bus again with nats-py's public API only (no fast paths), as on a nats-py without the hooks ---
	BUSLIB_FAST_PATHS=0 $(BIN)/python -m pytest $(BUS_TESTS) tests/test_dlq.py -q $(PYTEST_ARGS)
	@# --- the bus again on the lowest nats-py and pydantic that pyproject.toml allows ---
	$(LOWEST)/bin/python -m pytest $(BUS_TESTS) tests/test_dlq.py tests/test_connection.py -q $(PYTEST_ARGS)

lint: setup  ## ruff (lint and format), mypy, and the layers contract (no upward imports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

soak: setup  ## run lessons, exercise solutions, bus and server tests RUNS=10 times; list what ever failed
	$(BIN)/python scripts/soak.py --runs $(RUNS) $(SOAK_TESTS) $(if $(PYTEST_ARGS),--pytest-args='$(PYTEST_ARGS)')

# A second venv with the lowest versions pyproject.toml allows, remade when it changes.
$(LOWEST)/.installed: pyproject.toml tests/lowest_deps.py | $(BIN)/python
	@rm -rf $(LOWEST)
	@$(PYTHON) -m venv $(LOWEST)
	@echo "Installing the lowest allowed versions into $(LOWEST): $$($(BIN)/python tests/lowest_deps.py | tr '\n' ' ')"
	$(LOWEST)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' $$($(BIN)/python tests/lowest_deps.py)
	@touch $@

bench: setup  ## measure: server start time, then bus throughput
	$(BIN)/python benchmarks/bench_server_start.py
	$(BIN)/python benchmarks/bench_bus.py
	$(BIN)/python benchmarks/bench_cpu.py

clean:  ## remove caches and test artifacts (keeps .venv and your .buslib/ store)
	rm -rf .pytest_cache .ruff_cache test-artifacts .jupyter-runtime build dist *.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean  ## also remove .venv and .venv-lowest (the next make reinstalls)
	rm -rf $(VENV) $(LOWEST)
