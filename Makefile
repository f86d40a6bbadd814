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

.PHONY: venv demo test test-fast lint ui ui-check

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

# unit and contract tests (over SQL and HTTP), no end-to-end: the loop while working.
# --dist loadgroup: tests marked with one xdist_group run on one worker (test_layout's fork
# server starts once); the others are shared out as with the default (load).
test-fast: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow and not e2e"

# The web UI (control_room_ui/, docs/ui.md): `make ui` installs its locked dependencies and
# builds it into control_room/gateway/static/, which the gateway serves at /. `make test` builds
# it first when npm is present (only when its sources changed) and runs `ui-check`; without
# npm the browser tests (tests/ui) fail saying `make ui`.
NPM := $(shell command -v npm 2>/dev/null)
UI_DIR := control_room_ui
UI_INDEX := control_room/gateway/static/index.html
UI_SOURCES = $(shell find $(UI_DIR) -name node_modules -prune -o -type f -print 2>/dev/null)

ui:
	cd $(UI_DIR) && npm ci && npm run build

$(UI_DIR)/node_modules/.package-lock.json: $(UI_DIR)/package-lock.json
	cd $(UI_DIR) && npm ci

$(UI_INDEX): $(UI_DIR)/node_modules/.package-lock.json $(UI_SOURCES) control_room/contract/openapi.yaml
	cd $(UI_DIR) && npm run build

# the generated API types are current, the data-shaping unit tests (vitest), tsc
ui-check: $(UI_DIR)/node_modules/.package-lock.json
	cd $(UI_DIR) && npm run types:check
	cd $(UI_DIR) && npm test
	cd $(UI_DIR) && npm run typecheck

# what CI runs (.ci/run)
ifneq ($(NPM),)
test: lint $(UI_INDEX) ui-check
else
test: lint
endif
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --durations=15
