# Lakehouse Control Room: `make demo` runs the embedded database demo, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# pytest-xdist: one worker per core (each test clones its own database).
PYTEST_WORKERS ?= auto
# Let Python cache compiled modules (and pytest its rewritten tests) even where the environment
# says not to (PYTHONDONTWRITEBYTECODE=1 on this machine kind): the suite starts hundreds of
# interpreters (CLI, gateway, workers), each of which would compile our code again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv demo test test-fast lint

venv: $(STAMP)

# Reinstall only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev,mcp]"
	# the dbt kind's extra (its tests run in CI); dbt-core 1.11 pins pathspec<0.13, mypy 2
	# needs pathspec>=1: put 1.x back (dbt works with it: tests/executor/test_kind_dbt.py)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dbt,spark]"
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "pathspec>=1"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/control-room demo

# ruff, mypy --strict, the import-linter contracts (who may import whom: docs/architecture.md)
# and actionlint on the GitHub workflows
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/actionlint .github/workflows/*.yml

# unit and contract tests (over SQL and HTTP), no end-to-end: the loop while working
test-fast: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) -m "not slow and not e2e"

# what CI runs (.ci/run)
test: lint
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --durations=15
