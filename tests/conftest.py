"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer, redis_server

# Gateway and simulator fixtures (owner: knowctl/daemon): real processes on loopback ports.
pytest_plugins = ["tests.support.fixtures"]

# ---------------------------------------------------------------------------------------
# State-store fixtures (owner: knowctl/store). A real Redis-protocol server, started once
# per session on a free loopback port; tests isolate themselves by unique scope/key names.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server_proc() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server_proc: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of the session's server."""
    return redis_server_proc.url


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs once against ``memory://`` and once against the real Redis."""
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("redis_url"))


# --- end of state-store fixtures --------------------------------------------------------
