# Two entry points for newcomers: `make demo` (set up + run the main job) and `make test`
# (set up + run the test suite). Both create .venv idempotently.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.zarrl-installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: TorchRL's compiled extension only loads against this exact build (the package
	# itself declares the tested range, pyproject.toml).
	$(PY) -m pip install -q torch==2.14.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/zarrl demo

test: setup
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=2 $(PY) -m pytest
	PY=$(abspath $(PY)) .ci/kernel_paths.sh  # the numerics tests under other CPU kernel paths
	PY=$(abspath $(PY)) .ci/wheel_smoke.sh  # the wheel, installed outside the checkout, runs a demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) benchmarks/buffer.py

clean:
	rm -rf $(VENV) runs .pytest_cache
