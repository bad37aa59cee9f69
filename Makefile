# Two commands do all set-up on a fresh Debian/Ubuntu or macOS machine with Python and make:
#   make demo   creates .venv, installs edge-runtime, runs the demo on embedded defaults
#   make test   installs test dependencies (mosquitto too, when missing) and runs the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test test-tflite-runtime bench lint typecheck mosquitto clean help

help:
	@echo "make demo       install into $(VENV) and run the demo (no network needed)"
	@echo "make test       install test dependencies (and mosquitto) and run the whole suite"
	@echo "make bench      run the benchmarks against their raw baselines"
	@echo "make lint       ruff and mypy"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamps re-run the install whenever the package metadata changes.
$(VENV)/.installed-core: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@ $(VENV)/.installed-core

demo: $(VENV)/.installed-core
	$(BIN)/edge-runtime demo

# mosquitto is a system package, not a Python one: install it with the platform's package manager.
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || [ -x /usr/local/sbin/mosquitto ] \
	    || [ -x /opt/homebrew/sbin/mosquitto ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "installing mosquitto with apt-get"; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto >/dev/null; \
	elif command -v brew >/dev/null 2>&1; then \
	    echo "installing mosquitto with brew"; brew install mosquitto; \
	else echo "mosquitto is missing and neither apt-get nor brew is available: install mosquitto 2.x"; exit 1; fi

test: $(VENV)/.installed-dev mosquitto
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-tflite-runtime

# tflite-runtime 2.14, the fallback TFLite backend, is built against numpy 1.x and crashes under numpy 2, so its
# backend contract tests run in a virtualenv of their own with the 'tflite' extra (which pins numpy<2). Its wheels
# exist for Linux and CPython <= 3.11 only; elsewhere this step says so and is skipped.
TFLITE_VENV ?= .venv-tflite-runtime
$(TFLITE_VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/python -m pip install -q --upgrade pip
	$(TFLITE_VENV)/bin/python -m pip install -q -e '.[tflite]' pytest pytest-timeout hypothesis onnx
	@touch $@

test-tflite-runtime:
	@if $(PYTHON) -c 'import sys; sys.exit(not (sys.platform == "linux" and sys.version_info < (3, 12)))'; then \
	    $(MAKE) --no-print-directory $(TFLITE_VENV)/.installed && \
	    $(TFLITE_VENV)/bin/python -m pytest -q tests/edge_runtime/models/test_backends.py \
	        tests/edge_runtime/models/test_backends_contract.py; \
	else echo "tflite-runtime has no wheel for this platform or Python: its backend tests are skipped"; fi

bench: $(VENV)/.installed-dev mosquitto
	$(BIN)/python -m pytest benchmarks --timeout=0 --benchmark-only --benchmark-columns=min,median,mean,ops,rounds \
	    --benchmark-sort=name $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check edge_runtime cloud_sync tests benchmarks models
	$(BIN)/ruff format --check edge_runtime cloud_sync tests benchmarks models
	$(BIN)/mypy edge_runtime cloud_sync

clean:
	rm -rf $(VENV) $(TFLITE_VENV) build *.egg-info .benchmarks
