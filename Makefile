# room-supervisor developer entry points.
PYTHON ?= python3
LIVEKIT_VERSION := v1.13.5
RS_CACHE_DIR := $(or $(RS_CACHE_DIR),$(HOME)/.cache/room-supervisor)
LIVEKIT_DIR := $(RS_CACHE_DIR)/livekit-$(LIVEKIT_VERSION)
LIVEKIT_BIN := $(LIVEKIT_DIR)/server
PYTEST_ARGS ?=

.PHONY: test demo install smoke livekit-server bench

## Install what is missing, then run the demo on an embedded local stack (Ctrl-C stops everything).
demo: install
	$(PYTHON) -m supervisor.cli demo

## Install system packages, the livekit-server build and the Python package (skips what is there).
install:
	bash .ci/install

## Benchmarks: JSON on stdout, each compared with a baseline measured in the same run.
bench:
	$(PYTHON) bench/append.py
	$(PYTHON) bench/replay.py

## Full test suite (real redis-server and livekit-server, started by the harness).
test:
	$(PYTHON) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

## The LiveKit smoke test, five times in a row.
smoke:
	$(PYTHON) -m pytest -p no:cacheprovider tests/test_smoke_livekit.py --count 5 $(PYTEST_ARGS)

## Build livekit-server into the cache dir (skipped when already there).
livekit-server: $(LIVEKIT_BIN)

$(LIVEKIT_BIN):
	mkdir -p $(LIVEKIT_DIR)
	GOBIN=$(LIVEKIT_DIR) go install github.com/livekit/livekit-server/cmd/server@$(LIVEKIT_VERSION)
	test -x $@
