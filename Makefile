# Every target sets up what it needs: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: install test test-lowest demo bench docs lint format clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is needed; run make PYTHON=python3.x" or 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv with the package and its dev/test/docs extras

test: install  ## run the whole test suite (PostgreSQL tests need XPERSIST_SQL_TEST_POSTGRES_URL)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The lowest versions of the direct dependencies that pyproject.toml allows (uv's
# --resolution lowest-direct; transitive ones float to their latest) and fast tests against
# them, in two steps: without prefect (the store, serializers, queries and command line must not
# need it), then with the [prefect] extra added (the Prefect tests). In each, tests/test_packaging.py
# checks that every dependency resolved to exactly its declared lower bound: the bounds are the
# versions tested. uv comes from the test extra; the venv is build/venv-lowest.
LOWEST_VENV ?= build/venv-lowest
LOWEST_PY := $(LOWEST_VENV)/bin/python
LOWEST_EXTRAS ?= postgres,s3,dask,parquet,netcdf
LOWEST_TESTS ?= tests/test_packaging.py tests/test_store.py tests/test_serializers.py \
	tests/test_query.py tests/test_cli.py tests/test_units.py tests/test_schema.py \
	tests/test_migrations.py tests/test_locks.py
LOWEST_PREFECT_TESTS ?= tests/test_packaging.py tests/prefect
LOWEST_INSTALL = UV_PYTHON_DOWNLOADS=never $(BIN)/uv pip install --quiet --python $(LOWEST_PY) \
	--resolution lowest-direct 'pytest>=8' 'pytest-timeout>=2.3'

test-lowest: install  ## fast tests against the lowest dependency versions allowed
	@echo "every extra ([all]) resolves at its lower bounds:"
	UV_PYTHON_DOWNLOADS=never $(BIN)/uv pip compile --quiet --python-version 3.11 \
		--resolution lowest-direct --extra all pyproject.toml -o /dev/null
	rm -rf $(LOWEST_VENV)
	$(BIN)/python -m venv --without-pip $(LOWEST_VENV)
	$(LOWEST_INSTALL) -e '.[$(LOWEST_EXTRAS)]'
	$(BIN)/uv pip list --python $(LOWEST_PY)
	XPERSIST_SQL_TEST_LOWEST=core,$(LOWEST_EXTRAS) $(LOWEST_PY) -m pytest -q \
		-p no:tests.prefect_harness -m 'not slow' $(LOWEST_TESTS) $(PYTEST_ARGS)
	$(LOWEST_INSTALL) -e '.[prefect,$(LOWEST_EXTRAS)]'
	$(BIN)/uv pip list --python $(LOWEST_PY) | grep -iE '^(prefect|sqlalchemy|pydantic) '
	XPERSIST_SQL_TEST_LOWEST=prefect $(LOWEST_PY) -m pytest -q -m 'not slow' \
		$(LOWEST_PREFECT_TESTS) $(PYTEST_ARGS)

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
