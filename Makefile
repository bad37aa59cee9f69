# Two commands do all set-up on a fresh Debian/Ubuntu or macOS machine with Python and make:
#   make demo   creates .venv, installs edge-runtime, runs the demo on embedded defaults
#   make test   installs test dependencies (mosquitto too, when missing) and runs the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
# The lock of exact versions for this Python (requirements/lock-pyX.Y.txt), used as pip constraints so a fresh
# machine installs what the suite last passed with. LOCK=none installs from setup.cfg's ranges instead.
PYVER  := $(shell $(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null)
LOCK   ?= requirements/lock-py$(PYVER).txt
TFLITE_LOCK ?= requirements/lock-tflite-py$(PYVER).txt
constraints = $(if $(filter none,$(1)),,$(if $(wildcard $(1)),-c $(1),))
PIP_CONSTRAINTS := $(call constraints,$(LOCK))
TFLITE_CONSTRAINTS := $(if $(filter none,$(LOCK)),,$(call constraints,$(TFLITE_LOCK)))
PIP_INSTALL = $(BIN)/python -m pip install --progress-bar on --disable-pip-version-check

.PHONY: lint-only demo test test-tflite-runtime bench lint typecheck mosquitto clean help lock lock-note

help:
	@echo "make demo       install into $(VENV) and run the demo (no network needed)"
	@echo "make test       install test dependencies (and mosquitto) and run the whole suite"
	@echo "make bench      run the benchmarks against their raw baselines"
	@echo "make lint       ruff check, ruff format --check and mypy (make test runs them first)"
	@echo "make lock       refresh requirements/lock-py$(PYVER).txt from setup.cfg's ranges"
	@echo "LOCK=none       with demo or test: install from setup.cfg's ranges, not the lock"

# Says which versions are being installed, so a failure on a fresh machine names its cause.
lock-note:
	@if [ "$(LOCK)" = none ]; then echo "==> installing from setup.cfg's version ranges (LOCK=none)"; \
	elif [ -f "$(LOCK)" ]; then echo "==> installing the exact versions pinned in $(LOCK)"; \
	else echo "==> no lock for Python $(PYVER) ($(LOCK) is missing): installing from setup.cfg's ranges;" \
	    "'make lock' writes one"; fi

$(BIN)/python:
	@echo "==> creating the virtualenv $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --upgrade pip

# Stamps re-run the install whenever the package metadata changes.
# The lock is a prerequisite, so a refreshed lock re-runs the install; the stamps are named for the lock or
# the ranges, so switching LOCK=none on and off reinstalls too.
STAMP := $(if $(filter none,$(LOCK)),ranges,lock)
$(VENV)/.installed-core-$(STAMP): setup.cfg pyproject.toml $(wildcard $(LOCK)) | $(BIN)/python lock-note
	@echo "==> installing edge-runtime into $(VENV) (about a minute on a fresh machine)"
	$(PIP_INSTALL) $(PIP_CONSTRAINTS) -e .
	@rm -f $(VENV)/.installed-*-$(if $(filter none,$(LOCK)),lock,ranges)
	@touch $@

$(VENV)/.installed-dev-$(STAMP): setup.cfg pyproject.toml $(wildcard $(LOCK)) | $(BIN)/python lock-note
	@echo "==> installing edge-runtime with the test and lint tools into $(VENV) (1-2 minutes on a fresh machine)"
	$(PIP_INSTALL) $(PIP_CONSTRAINTS) -e '.[dev]'
	@rm -f $(VENV)/.installed-*-$(if $(filter none,$(LOCK)),lock,ranges)
	@touch $@ $(VENV)/.installed-core-$(STAMP)

demo: $(VENV)/.installed-core-$(STAMP)
	@echo "==> running the demo (offline, on the embedded defaults)"
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

test: $(VENV)/.installed-dev-$(STAMP) mosquitto
	@$(MAKE) --no-print-directory lint-only
	@echo "==> running the test suite (about 4 minutes on 2 cores)"
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-tflite-runtime

# tflite-runtime 2.14, the fallback TFLite backend, is built against numpy 1.x and crashes under numpy 2, so its
# backend contract tests run in a virtualenv of their own with the 'tflite' extra (which pins numpy<2). Its wheels
# exist for Linux and CPython <= 3.11 only; elsewhere this step says so and is skipped.
TFLITE_VENV ?= .venv-tflite-runtime
TFLITE_TEST_TOOLS := pytest pytest-timeout hypothesis onnx
$(TFLITE_VENV)/.installed: setup.cfg pyproject.toml $(wildcard $(TFLITE_LOCK))
	@echo "==> creating $(TFLITE_VENV) for the tflite-runtime backend tests (numpy<2)"
	$(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/python -m pip install --disable-pip-version-check --upgrade pip
	$(TFLITE_VENV)/bin/python -m pip install --disable-pip-version-check $(TFLITE_CONSTRAINTS) \
	    -e '.[tflite]' $(TFLITE_TEST_TOOLS)
	@touch $@

test-tflite-runtime:
	@if $(PYTHON) -c 'import sys; sys.exit(not (sys.platform == "linux" and sys.version_info < (3, 12)))'; then \
	    $(MAKE) --no-print-directory $(TFLITE_VENV)/.installed && \
	    echo "==> running the tflite-runtime backend contract tests" && \
	    $(TFLITE_VENV)/bin/python -m pytest -q tests/edge_runtime/models/test_backends.py \
	        tests/edge_runtime/models/test_backends_contract.py; \
	else echo "tflite-runtime has no wheel for this platform or Python: its backend tests are skipped"; fi

bench: $(VENV)/.installed-dev-$(STAMP) mosquitto
	$(BIN)/python -m pytest benchmarks --timeout=0 --benchmark-only --benchmark-columns=min,median,mean,ops,rounds \
	    --benchmark-sort=name $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev-$(STAMP)
	@$(MAKE) --no-print-directory lint-only

# The house rules, fast and before the suite so a style slip fails in seconds, not after four minutes.
lint-only:
	@echo "==> ruff check, ruff format --check, mypy"
	$(BIN)/ruff check edge_runtime cloud_sync tests benchmarks models
	$(BIN)/ruff format --check edge_runtime cloud_sync tests benchmarks models
	$(BIN)/mypy edge_runtime cloud_sync

# Refresh the locks: install from setup.cfg's ranges into throwaway virtualenvs and record what pip chose.
# Run 'make test' afterwards; commit the lock only when it passes.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --disable-pip-version-check --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --disable-pip-version-check -e '.[dev]'
	@mkdir -p requirements
	@{ echo "# Exact versions 'make test' last passed with on CPython $(PYVER): 'make lock' refreshes this file."; \
	   echo "# Used as pip constraints by 'make demo' and 'make test'; 'make test LOCK=none' uses setup.cfg's ranges."; \
	   $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable; } > requirements/lock-py$(PYVER).txt
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --disable-pip-version-check -e '.[tflite]' $(TFLITE_TEST_TOOLS)
	@{ echo "# Exact versions of the tflite-runtime venv (the 'tflite' extra, numpy<2) on CPython $(PYVER):" \
	   "'make lock' refreshes it."; $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable; } \
	   > requirements/lock-tflite-py$(PYVER).txt
	rm -rf $(LOCK_VENV)
	@echo "==> wrote requirements/lock-py$(PYVER).txt and requirements/lock-tflite-py$(PYVER).txt"

clean:
	rm -rf $(VENV) $(TFLITE_VENV) $(LOCK_VENV) build *.egg-info .benchmarks
