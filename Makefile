# freshtune — two commands do all set-up:  `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Without an NVIDIA GPU we install PyTorch's CPU wheel: first from a local wheel if pip is
# configured with one (--no-index fails fast otherwise; torch's own dependencies then come
# with the project's), else from PyTorch's CPU index.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: setup browser demo test lint clean gpu-check

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(HAS_GPU),yes)
	$(BIN)/python -m pip install "torch==$(TORCH_VERSION)"
else
	$(BIN)/python -m pip install --no-index --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null \
	  || $(BIN)/python -m pip install "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX)
endif
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

demo: setup  ## fetch SmolLM2, write two monthly drops, run the refresh loop on each
	$(BIN)/freshtune demo --months 2

# Debian's chromium for the UI screenshot tests (tests/deployments/test_ui.py skips without it).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
	       || { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null; }; }; } \
	  || echo "chromium not installed: the browser tests will be skipped (apt-get install chromium)"

# Two pytest-xdist workers: much of the suite waits on servers, workers and subprocesses, so two
# share the 2 cores of CI's machine (TEST_WORKERS=0 runs it in one process). A module's tests stay
# in one worker (tests/helpers/xdist.py), handed out in collection order: the long ones first.
TEST_WORKERS ?= 2
test: setup browser  ## the whole suite, as CI runs it
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --no-loadscope-reorder

# On a CUDA machine: the one-shot GPU check (bench/gpu_check.py), at most 8 minutes, results
# under $$OUT (default ./gpu-check-out). PY=python3 runs it with an interpreter that already has
# the stack (a prepared image) instead of the venv. Without a GPU it says so and does nothing.
gpu-check:
ifeq ($(HAS_GPU),yes)
ifdef PY
	$(PY) bench/gpu_check.py
else
	$(MAKE) setup
	$(BIN)/python -m pip install --quiet -e ".[gpu,bench]"
	$(BIN)/python bench/gpu_check.py
endif
else
	@echo "gpu-check: no NVIDIA GPU here (nvidia-smi lists none); nothing to check."
endif

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .freshtune .pytest_cache
