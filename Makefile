# pymooncake: build, test and benchmark the Python package and its Go engine.
#   make build   build the extension for $(PYTHON) into pymooncake/_gopy
#   make test    go vet + go test, build, ruff + mypy, pytest
#   make bench   per-call costs and loopback latency/throughput
#   make golden  recapture the Mooncake wire goldens (python/interop)
PYTHON ?= python3
GO     ?= go
# the checkout's pymooncake (with the extension `make build` put in it)
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: all run setup tools build test test-go lint-py test-py dev-deps bench golden clean

all: build

# the main job: build the extension (fetching gopy on first use) and run
# the loopback transfer benchmark, P2PHANDSHAKE over TCP
run: build
	$(PYTHON) -m pymooncake bench --mode loopback $(ARGS)

# everything `make test` needs on a fresh machine (apt etcd, gopy, pytest,
# Mooncake's wheel in .venv-mooncake); idempotent
setup:
	scripts/setup.sh $(PYTHON)

tools:
	scripts/install-gopy.sh $(PYTHON)

build:
	scripts/build_ext.sh $(PYTHON)

test: setup test-go build lint-py test-py

# pymooncake/_gopy holds generated package main code; Go's ./... skips it
# because of the leading underscore.
test-go:
	$(GO) vet ./...
	$(GO) test ./...

dev-deps:
	@$(PYTHON) -c 'import pytest, mypy, ruff' 2>/dev/null || \
	  $(PYTHON) -m pip install --disable-pip-version-check -q 'pytest>=7' 'mypy>=1.8' 'ruff>=0.4'

lint-py: dev-deps
	$(PYTHON) -m ruff check pymooncake python/tests python/bench setup.py
	$(PYTHON) -m mypy

test-py: dev-deps
	$(PYTHON) -m pytest python/tests

bench: build
	$(PYTHON) python/bench/bench_calls.py
	$(PYTHON) python/bench/bench_loopback.py
	$(PYTHON) -m pymooncake bench --mode loopback --duration 5

golden:
	$(PYTHON) python/interop/capture.py

clean:
	rm -rf pymooncake/_gopy build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find pymooncake python -name __pycache__ -type d -prune -exec rm -rf {} +
