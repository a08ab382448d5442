# Every target sets up what it needs: a fresh machine needs only Python 3.10+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: install test demo bench docs lint format clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "Python 3.10+ is needed; run make PYTHON=python3.x" or 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv with the package and its dev/test/docs extras

test: install  ## run the whole test suite (PostgreSQL tests need XPERSIST_SQL_TEST_POSTGRES_URL)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install  ## the tutorial as a script: a store in a temporary directory, Prefect flows
	$(BIN)/python examples/demo.py

bench: install  ## benchmarks with ratios against peers
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

docs: install  ## build the documentation site, warnings as errors
	$(BIN)/mkdocs build --strict --site-dir site

lint: install  ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) site build dist .pytest_cache .mypy_cache .ruff_cache
