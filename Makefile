# `make demo`, `make test` and `make test-all` set everything up: a virtual environment in .venv
# (created when missing), the package in editable mode with its test and pyiqa extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo lint test test-all benchmark clean

$(STAMP): setup.py setup.cfg
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,pyiqa]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m surgery demo

lint: $(STAMP)
	$(BIN)/ruff check surgery tests benchmarks

# the quick suite: everything but the tests marked slow (real sizes, notebooks, benchmark scripts)
test: lint
	$(BIN)/python -m pytest -q -m "not slow"

# everything: what CI runs
test-all: lint
	$(BIN)/python -m pytest -q

benchmark: $(STAMP)
	$(BIN)/python benchmarks/robustblock.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
