"""Pure tests: no servers, no Redis; `make test-unit` runs them alone."""
