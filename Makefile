# Loa — make targets. `make help` lists them.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null)

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(BIN)/python:
	@if [ -n "$(UV)" ]; then $(UV) venv -q -p $(PY) $(VENV); else $(PY) -m venv $(VENV) && $(BIN)/pip install -q --upgrade pip; fi

$(VENV)/.runtime: $(BIN)/python requirements.lock pyproject.toml
	@if [ -n "$(UV)" ]; then $(UV) pip install -q -p $(BIN)/python -r requirements.lock -e .; \
	else $(BIN)/pip install -q -r requirements.lock -e .; fi
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock
	@if [ -n "$(UV)" ]; then $(UV) pip install -q -p $(BIN)/python -r requirements-dev.lock -e '.[dev]'; \
	else $(BIN)/pip install -q -r requirements-dev.lock -e '.[dev]'; fi
	@touch $@

.PHONY: venv
venv: $(VENV)/.dev ## Create .venv with runtime and dev dependencies

.PHONY: demo
demo: $(VENV)/.runtime ## Run the demo: embedded stack, simulators, a census SMS wave and credential emails
	$(BIN)/loa demo

.PHONY: run
run: $(VENV)/.runtime ## Run the whole service (API, workers, scheduler; simulators without a gateways file)
	$(BIN)/loa run

.PHONY: test
test: $(VENV)/.dev ## Run the whole test suite (LOA_TEST_DATABASE_URL / LOA_TEST_REDIS_URL for real services)
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: lint
lint: $(VENV)/.dev ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.PHONY: format
format: $(VENV)/.dev ## Apply ruff's formatting and fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: lock
lock: $(BIN)/python ## Re-pin requirements*.lock from pyproject.toml (needs uv)
	uv pip compile -q pyproject.toml -o requirements.lock --python-version 3.11
	uv pip compile -q pyproject.toml --extra dev -o requirements-dev.lock --python-version 3.11

.PHONY: bench
bench: $(VENV)/.dev ## Benchmarks (see bench/README.md for sizes and services)
	@echo "see bench/README.md"

.PHONY: clean
clean: ## Remove the virtualenv and the embedded state (.loa)
	rm -rf $(VENV) .loa .pytest_cache .mypy_cache .ruff_cache
