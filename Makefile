# `make run` and `make test` each set up .venv themselves on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch (about 200 MB): PyPI's own torch wheel for Linux x86_64 is a multi-GB CUDA build. The first
# try takes it from wherever pip already looks (this project's machines keep it on disk), the second from PyTorch's
# CPU index. Elsewhere PyPI's torch is the CPU build (see constraints.txt).
TORCH := $(shell [ "$$(uname -sm)" = "Linux x86_64" ] && echo torch==2.13.0+cpu || echo torch==2.13.0)
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt '$(TORCH)' 2>/dev/null \
		|| $(BIN)/pip install --quiet -c constraints.txt --extra-index-url $(TORCH_CPU_INDEX) '$(TORCH)'
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,discord,slack,postgres]'
	touch $(STAMP)

# The bot. With no platform tokens in the environment or .env it opens a chat in this terminal, serving
# SCRATCHBOT_CHECKPOINT, else the newest checkpoint in data/checkpoints, else the bundled demo model.
run: $(STAMP)
	$(BIN)/scratchbot run

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/generate.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
