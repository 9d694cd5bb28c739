"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_cluster import RedisCluster, SentinelGroup, redis_cluster, sentinel_group
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


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs against ``memory://``, the real Redis and a real 3-master Redis
    Cluster (``redis_cluster_url`` below)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return str(request.getfixturevalue("redis_url"))


# --- end of state-store fixtures --------------------------------------------------------


# ---------------------------------------------------------------------------------------
# Distributed Redis fixtures (owner: knowctl/store; issue 7). A real 3-master Redis Cluster
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
