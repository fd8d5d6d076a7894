# K2: `make run` starts the embedded platform, `make test` runs lint and the test suite.
# Both set themselves up: the venv is (re)built whenever pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# DuckDB's own Iceberg extension, an independent reader the interoperability tests compare K2 with: its wheels are built
# for another DuckDB release than K2 pins, so it gets a venv of its own (tests/support/duckdb_iceberg/).
ICEBERG_DIR := tests/support/duckdb_iceberg
ICEBERG_VENV := $(ICEBERG_DIR)/.venv
ICEBERG_STAMP := $(ICEBERG_VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint format install services system-deps clean

install: $(STAMP) $(ICEBERG_STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

$(ICEBERG_STAMP): $(ICEBERG_DIR)/requirements.txt
	@test -x $(ICEBERG_VENV)/bin/python || $(PYTHON) -m venv $(ICEBERG_VENV)
	$(ICEBERG_VENV)/bin/python -m pip install --quiet -r $(ICEBERG_DIR)/requirements.txt
	@touch $(ICEBERG_STAMP)

# Debian tools the tests run for real: promtool and prometheus (the packaged service is left stopped), chromium.
system-deps:
	@command -v promtool >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus && (systemctl disable --now prometheus >/dev/null 2>&1 || true))
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# Local services the tests use for real (PostgreSQL, Redis); started only if they are down.
services:
	@pg_isready -h 127.0.0.1 -p 5432 -q || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no

run: install
	$(BIN)/k2 run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Two workers (the tests wait on brokers and processes more than they compute), then the `serial` tests alone.
test: install system-deps services lint
	$(BIN)/python -m pytest -n 2 --dist worksteal -m "not serial" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m serial $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(ICEBERG_VENV) .k2 .pytest_cache .mypy_cache .ruff_cache
