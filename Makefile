# `make run` and `make test` each set up .venv themselves on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,discord,slack,postgres]'
	touch $(STAMP)

# Until the bot lands, the main job demonstrates generation. Without CHECKPOINT=path it makes a random-weight
# gpt2-small to show the pipeline and its speed (its text is gibberish: no trained weights ship yet).
CHECKPOINT ?= data/random-gpt2-small.safetensors
PROMPT ?= Name three primary colors.
PRECISION ?= int8

data/random-gpt2-small.safetensors: | $(STAMP)
	mkdir -p data
	$(BIN)/scratchbot init-model gpt2-small $@ --seed 0

run: $(STAMP) $(CHECKPOINT)
	$(BIN)/scratchbot generate --checkpoint '$(CHECKPOINT)' --precision $(PRECISION) --max-new-tokens 64 '$(PROMPT)'

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/generate.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
