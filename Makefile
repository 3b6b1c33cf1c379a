# Two entry points that work on a fresh machine with only Python 3:
#   make test   create .venv, install tfopt with its test extras, lint, test
#   make demo   create .venv, install tfopt with the bundled data, run the demo
# and, for everyday work, make test-fast: everything not marked slow.
# On a CUDA machine (not part of CI):
#   make gpu-check  add TensorFlow's CUDA wheels, run scripts/gpu_check.py
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Test processes (pytest-xdist), whole files each: two, for the 2-core
# machine the suite is timed on (22 min in one process, 14 in two). More
# would each load TensorFlow (about 1 GB) for little gain here.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

.PHONY: test test-fast test-models demo lint clean gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel

# A stamp per extra: reinstall only when the package metadata changes.
$(VENV)/.installed-%: setup.cfg setup.py pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[$*]'
	touch $@

lint: $(VENV)/.installed-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test: lint
	$(PYTEST)

test-fast: lint
	$(PYTEST) -m "not slow"

# Every applications family through prune, QAT and int8 export, and the
# Keras 3 applications through channel pruning and shrink.
test-models: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m models

demo: $(VENV)/.installed-data
	$(BIN)/python scripts/train.py --flagfile=scripts/demo.flags

# tensorflow[and-cuda] brings the CUDA and cuDNN wheels TensorFlow loads.
$(VENV)/.installed-cuda: $(VENV)/.installed-test
	$(BIN)/python -m pip install 'tensorflow[and-cuda]==2.21.*'
	touch $@

gpu-check: $(VENV)/.installed-cuda
	$(BIN)/python scripts/gpu_check.py --output=gpu_check.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
