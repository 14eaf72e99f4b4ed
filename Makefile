# Two-command setup: `make demo` and `make test` each create or reuse .venv,
# install what they need (torch pinned to 2.13.0 through constraints.txt) and run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
DEMO_OUT ?= demo_output

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $@

$(VENV)/.installed-demo: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[demo]"
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/python pipelines/demo.py --out $(DEMO_OUT) --overwrite

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_patches.py
	$(BIN)/python benchmarks/bench_metrics.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache .mypy_cache
