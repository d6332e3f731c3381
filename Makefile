# adapterreg: `make demo` runs the adapter lifecycle on real input, `make test` the suite.
# Both install what they need into .venv first and are safe to run again.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch; a looser pin would download gigabytes of CUDA libraries.
TORCH := torch==2.13.0

.PHONY: install demo test bench lint fortunes clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

fortunes:
	@sh scripts/ensure_fortunes.sh

demo: install fortunes
	HF_HUB_OFFLINE=1 $(BIN)/adapterreg demo

test: install fortunes
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: install fortunes
	HF_HUB_OFFLINE=1 $(BIN)/python bench/transfer.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/train.py

lint: install
	$(BIN)/ruff check registry cli trainer tests bench migrations scripts
	$(BIN)/ruff format --check registry cli trainer tests bench migrations scripts
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .demo
