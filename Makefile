# The everyday commands. `make test` installs what the tests need and runs them all.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint format bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,vertex,deploy]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## the gateway with its built-in simulator as upstream
	$(VENV)/bin/knowctl serve --simulate

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check knowctl tests bench
	$(VENV)/bin/ruff format --check knowctl
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format knowctl
	$(VENV)/bin/ruff check --fix knowctl tests bench

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
