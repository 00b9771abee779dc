# pymooncake: build, test and benchmark the Python package and its Go engine.
#   make build   build the extension for $(PYTHON) into pymooncake/_gopy
#   make test    go vet + go test, build, ruff + mypy, pytest
#   make bench   per-call costs and loopback latency/throughput
#   make wheel   the release wheel for $(PYTHON): manylinux, checked (dist/)
#   make sdist   the source distribution (dist/)
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

test: setup test-go build lint-py test-py test-wheel

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

# barex-shim: the barex transport's shim over Alibaba's accl-barex, built
# only where its SDK is installed (headers in $(ACCL_ROOT)/include/accl/barex,
# libaccl_barex.so in $(ACCL_ROOT)/lib or lib64), with the compiler that built
# libaccl_barex. Install the result next to the extension (pymooncake/) or
# name it in MC_BAREX_SHIM. BAREX_SHIM_FLAGS=-DMCBX_REGMR_WITH_DEVICE for a
# barex whose RegUserMr takes a GPU ordinal. docs/barex.md says more.
ACCL_ROOT ?= /usr
BAREX_SHIM_OUT ?= build/libmooncake_barex_shim.so
.PHONY: barex-shim
barex-shim:
	@test -f "$(ACCL_ROOT)/include/accl/barex/barex.h" || { \
	  echo "barex-shim: no accl-barex SDK under ACCL_ROOT=$(ACCL_ROOT) (want include/accl/barex/barex.h)"; exit 2; }
	mkdir -p $(dir $(BAREX_SHIM_OUT))
	$(CXX) -std=c++17 -O2 -g -fPIC -shared -fvisibility=hidden -Wall -Wextra -DCMAKE_INCLUDE $(BAREX_SHIM_FLAGS) \
	  -I$(ACCL_ROOT)/include -Icore/transport/barex/shim core/transport/barex/shim/mc_barex_shim.cpp \
	  -L$(ACCL_ROOT)/lib -L$(ACCL_ROOT)/lib64 -Wl,--no-undefined -laccl_barex -lpthread \
	  -o $(BAREX_SHIM_OUT)

golden:
	$(PYTHON) python/interop/capture.py

# Release packaging (docs/packaging.md). `make wheel` builds the wheel for
# $(PYTHON) through setup.py (reusing the extension `make build` made when
# it is newer than its sources), repairs it with auditwheel to the
# manylinux tag the host's glibc allows and checks it strictly
# (scripts/check_wheel.py); the wheel lands in dist/.
.PHONY: wheel sdist test-wheel
wheel:
	scripts/build_wheel.sh $(PYTHON)

sdist:
	scripts/build_wheel.sh --sdist $(PYTHON)

# The wheel as `make wheel` builds it, installed into a fresh venv with no Go
# and no source tree on its paths: import, loopback transfer, the bench CLI,
# auditwheel show and the exclusions, the check's self-test; then the sdist:
# its contents, its error without Go, and a build from it.
test-wheel:
	scripts/test_wheel.sh $(PYTHON)
	scripts/test_sdist.sh $(PYTHON)

clean:
	rm -rf pymooncake/_gopy build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find pymooncake python -name __pycache__ -type d -prune -exec rm -rf {} +
