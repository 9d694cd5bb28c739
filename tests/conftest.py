"""Fixtures shared by the tiers: the real Redis servers (one plain server, one 3-master
Cluster per session) and the store over each backend, used by the store, gateway, cli, soak
and deploy tiers alike; the gateway and simulator processes (tests.support.fixtures). A
tier's own fixtures live in its conftest.py. Nothing here starts until a test asks for it,
so ``make test-unit`` runs with no Redis on the machine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from knowctl.store import Store, open_store
from tests.support.redis_cluster import RedisCluster, SentinelGroup, redis_cluster, sentinel_group
from tests.support.redis_server import RedisServer, redis_server

# Gateway and simulator fixtures (owner: knowctl/daemon): real processes on loopback ports.
pytest_plugins = ["tests.support.fixtures"]

# Generous: store tests are about semantics, not about the daemon's short production timeout.
STORE_TIMEOUT = 2.0

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


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs against ``memory://``, the real Redis and a real 3-master Redis
    Cluster (``redis_cluster_url`` below)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (pytest.mark.anyio) run on asyncio, as the daemon does."""
    return "asyncio"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open store on each backend of ``store_url``, closed after the test."""
    s = open_store(store_url, timeout=STORE_TIMEOUT)
    yield s
    await s.close()


# --- end of state-store fixtures --------------------------------------------------------


# ---------------------------------------------------------------------------------------
# Distributed Redis fixtures (owner: knowctl/store). A real 3-master Redis Cluster
# on loopback, started once per session (about 2 s) and shared like the plain server; a
# Sentinel group (master, replica, Sentinel) per test that wants one, as failover tests
# change which server is master.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_cluster_proc() -> Iterator[RedisCluster]:
    with redis_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster_proc: RedisCluster) -> str:
    """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/`` of the session's Cluster."""
    return redis_cluster_proc.url


@pytest.fixture
def sentinel_proc() -> Iterator[SentinelGroup]:
    with sentinel_group() as group:
        yield group


# --- end of distributed Redis fixtures ----------------------------------------------------
