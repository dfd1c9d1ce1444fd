# One entry point for people and CI. `make serve` and `make test` create the
# environment on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint types pytest bench docs clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch, pinned: any other spec pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Start the platform on its embedded default (SQLite, local models) at 127.0.0.1:8080.
serve: $(STAMP)
	$(BIN)/cumulo serve

## Lint, type-check and run the whole test suite.
test: lint types pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/gateway.py

## Write the CLI reference into the README, from the commands themselves.
docs: $(STAMP)
	$(BIN)/python -m cumulo.cli.reference --write README.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
