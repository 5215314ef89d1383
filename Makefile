# One place for the commands developers and CI share.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: setup demo test lint typecheck unit bench bench-decision clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The benchmarks also draw plots (matplotlib, a pinned optional extra).
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

## Run the sample logistics API with the broker in front of it.
demo: $(STAMP)
	$(BIN)/broker --log-format console demo

## Lint, type-check and run every test; what CI runs.
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check broker tests bench
	$(BIN)/ruff format --check broker tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

## Every benchmark, side by side with its baselines (about 10 minutes on 2 cores): the
## decision core, the counter stores, HTTP (direct, nginx, bare proxy, broker), PostgreSQL
## (direct, PgBouncer, broker), SQL analysis, and memory. Needs wrk, nginx, pgbench and
## pgbouncer (apt-get install -y wrk nginx postgresql-client pgbouncer).
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.decision
	$(BIN)/python -m bench.meter
	$(BIN)/python -m bench.http --duration 6
	$(BIN)/python -m bench.pg --seconds 5
	$(BIN)/python -m bench.sql
	$(BIN)/python -m bench.memory

bench-decision: $(BENCH_STAMP)
	$(BIN)/python -m bench.decision

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
