# The everyday commands: `make run` (the gateway with its simulator), `make test` (every tier),
# `make test-unit` (the pure tier), `make lint`, `make bench`. Each installs what it needs into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.installed-base
DEV := $(VENV)/.installed-dev
TOOLS := $(VENV)/.installed-tools
BENCH := $(VENV)/.installed-bench
# The JavaScript SDK the node tests run (tests/sdk/test_node_sdk.py); npm writes this file last.
NODE_SDK := tests/sdk/node/node_modules/.package-lock.json

.PHONY: install run test test-unit lint format bench clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The daemon and CLI alone: all `make run` needs.
$(BASE): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $(BASE)

# Plus the test clients (google-genai, the vertexai SDK), validators and linters.
$(DEV): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test,vertex,deploy]'
	$(PY) -m pip install --quiet 'google-genai>=3.6,<4' 2>/dev/null
	$(PY) -c "import google.genai as g, sys; sys.exit(tuple(map(int, g.__version__.split('.')[:2])) < (3, 6))"
	touch $(DEV) $(BASE)

# Outside the venv: redis-server/-sentinel, wrk and the deployment validators (root or sudo).
$(TOOLS): .ci/install-test-deps .ci/install-deploy-tools | $(DEV)
	.ci/install-test-deps $(VENV)
	touch $(TOOLS)

# @google/genai as pinned in tests/sdk/node/package-lock.json (node and npm come with $(TOOLS));
# again only when the lock changes.
$(NODE_SDK): tests/sdk/node/package.json tests/sdk/node/package-lock.json | $(TOOLS)
	npm ci --prefix tests/sdk/node --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null
	touch $(NODE_SDK)

install: $(DEV) $(TOOLS) $(NODE_SDK)

run: $(BASE)
	$(VENV)/bin/knowctl serve --simulate

test: $(DEV) $(TOOLS) $(NODE_SDK)
	$(PY) -m pytest

# The pure tier alone (no Redis, no servers): seconds, for the edit-test loop.
test-unit: $(DEV)
	$(PY) -m pytest tests/unit

lint: $(DEV)
	$(VENV)/bin/ruff check knowctl tests bench
	$(VENV)/bin/ruff format --check knowctl tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(DEV)
	$(VENV)/bin/ruff format knowctl tests bench
	$(VENV)/bin/ruff check --fix knowctl tests bench

# The libraries bench/libraries.py measures knowctl's own clients against.
$(BENCH): pyproject.toml | $(DEV)
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $(BENCH)

bench: $(DEV) $(TOOLS) $(BENCH)
	$(PY) bench/run.py
	$(PY) bench/libraries.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
