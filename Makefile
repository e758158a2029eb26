# flowdiff: the two set-up commands are `make demo` and `make test`.
# Each creates .venv and installs what it needs first. Torch is pinned to the CPU build 2.13.0
# *before* the package, so the package's `torch>=2.1` is already met and no CUDA wheel is pulled.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0
# The reference libraries the benchmarks (and their quick-mode tests) compare against. --no-deps:
# what they import (torch, numpy, torchdiffeq, POT) is already ours, while torchcfm's declared
# torchdyn -> torchvision chain would replace torch with a multi-GB CUDA 2.14 build.
REFERENCES := flow-matching==1.0.10 torchcfm==1.0.7

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(REFERENCES)
	touch $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/flowdiff demo --out demo_out

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) demo_out .pytest_cache
