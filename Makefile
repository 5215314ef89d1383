# One place for the commands developers and CI share.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
# The per-request modules compiled with mypyc (broker/native.py lists them; when any module
# differs from what was built, all run as Python, with a warning). NATIVE=0 skips compiling.
NATIVE ?= 1
NATIVE_COUNT := $(shell grep -c '^    "broker\.' broker/native.py)
# every module: the compiled code holds other modules' constants and checks their types
NATIVE_SOURCES := $(shell find broker -name '*.py' -not -path '*/__pycache__/*')
ifeq ($(NATIVE),1)
BUILT := $(VENV)/.compiled-stamp
RUN_AS :=
else
BUILT := $(STAMP)
RUN_AS := BROKER_PURE_PYTHON=1
endif

.PHONY: lock setup compile demo test test-moved-clock lint typecheck unit image-check bench bench-decision clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Compile the per-request modules (about two minutes; needs a C compiler).
$(VENV)/.compiled-stamp: $(STAMP) $(NATIVE_SOURCES) setup.py
	@echo "compiling $(NATIVE_COUNT) per-request modules with mypyc (about two minutes; NATIVE=0 skips it)"
	BROKER_COMPILE=1 $(BIN)/python setup.py --quiet build_ext --inplace > $(VENV)/compile.log 2>&1 \
	  || { tail -30 $(VENV)/compile.log >&2; echo "compiling failed (the whole log: $(VENV)/compile.log); \
	       without a C compiler, NATIVE=0 runs everything as Python" >&2; exit 1; }
	@$(BIN)/python -c 'import broker, sys; print("broker modules:", broker.NATIVE); sys.exit(broker.NATIVE != "compiled")'
	touch $@

compile: $(VENV)/.compiled-stamp

setup: $(BUILT)

# The container image installs from these locks with --require-hashes (see Dockerfile).
## Regenerate requirements.lock and requirements-build.lock after changing pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet uv==0.13.9
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 --python-platform linux --no-header -o requirements.lock
	$(BIN)/uv pip compile requirements-build.in --generate-hashes --python-version 3.11 --no-header -o requirements-build.lock

# The benchmarks also draw plots (matplotlib, a pinned optional extra).
$(BENCH_STAMP): $(BUILT)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

## Run the sample logistics API with the broker in front of it.
## Options pass through: make demo ARGS="--port 9080 --upstream-port 9081"
demo: $(BUILT)
	$(RUN_AS) $(BIN)/broker --log-format console demo $(ARGS)

## Lint, type-check and run every test; what CI runs.
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check broker tests bench deploy
	$(BIN)/ruff format --check broker tests bench deploy

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(BUILT)
	BROKER_EXPECT_NATIVE=$(NATIVE) $(RUN_AS) $(BIN)/pytest

## The whole suite again with this process's clock moved (a year ahead by default), so a
## test or a feature that only works near today's date fails here, not on a user's clone.
## Servers the tests start keep the real clock; Redis and PostgreSQL are other machines.
## Needs libfaketime (apt-get install -y faketime).
CLOCK_SHIFT ?= +365d
FAKETIME_LIB ?= $(firstword $(wildcard /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1))
test-moved-clock: $(BUILT)
	@test -n "$(FAKETIME_LIB)" || { echo "libfaketime is missing: apt-get install -y faketime" >&2; exit 1; }
	REAL_NOW=$$(date +%s) LD_PRELOAD=$(FAKETIME_LIB) FAKETIME="$(CLOCK_SHIFT)" $(BIN)/python -c \
	  'import os, sys, time; moved = time.time() - int(os.environ["REAL_NOW"]); \
	   print(f"tests under a clock moved by {moved / 86400:+.1f} days"); sys.exit(abs(moved) < 3600)'
	BROKER_EXPECT_NATIVE=$(NATIVE) $(RUN_AS) LD_PRELOAD=$(FAKETIME_LIB) FAKETIME="$(CLOCK_SHIFT)" $(BIN)/pytest

## The container image's promises checked without a Docker engine: the Dockerfile's steps
## replayed into a root built from this machine's Debian, the entrypoint run there read-only
## as the image's user under strace, and a report of what held. Downloads from PyPI (so not
## part of `make test`); needs root, util-linux, iproute2 and strace (apt-get install -y strace).
image-check: $(STAMP)
	$(BIN)/python -m deploy.image_check $(ARGS)

## Every benchmark, side by side with its baselines (about 13 minutes on 2 cores): the
## decision core, the counter stores, HTTP (direct, nginx, bare proxy, broker), PostgreSQL
## (direct, PgBouncer, broker), SQL analysis, memory, and serving during a reload of
## 100,000 employees. Needs wrk, nginx, pgbench and pgbouncer
## (apt-get install -y wrk nginx postgresql-client pgbouncer).
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.decision
	$(BIN)/python -m bench.meter
	$(BIN)/python -m bench.http --duration 6
	$(BIN)/python -m bench.pg --seconds 5
	$(BIN)/python -m bench.sql
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.reload
	$(BIN)/python -m bench.audit_writer --events 100000

bench-decision: $(BENCH_STAMP)
	$(BIN)/python -m bench.decision

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build broker/native.stamp
	find broker -name '*.so' -delete
