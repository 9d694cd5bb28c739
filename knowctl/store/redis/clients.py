"""One redis.asyncio client per store URL scheme, configured alike: every socket operation
and every wait for a pooled connection bounded by the store timeout, and no client-side
retries of whole commands (a retry could outlast the timeout; callers see StoreUnavailable
at once and decide themselves). Redirections (Cluster MOVED/ASK) and master discovery
(Sentinel) are not retries: the clients follow them within the same call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from knowctl.net.resp import Multiplexer, address_for
from knowctl.store.urls import parse_multi_host, scheme_of

DEFAULT_MAX_CONNECTIONS = 64
SUBSCRIPTION_HEADROOM = 16


@dataclass
class Clients:
    """The client a RedisStore talks through, and what else closing it must close."""

    client: Redis | RedisCluster
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    mux: Multiplexer | None = None  # one server: its single commands (knowctl.net.resp)


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def _timeouts(timeout: float) -> dict[str, Any]:
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout}


def single(url: str, *, timeout: float, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Clients:
    """``redis://`` / ``rediss://``: one server. Single commands share one pipelined
    connection (knowctl.net.resp) unless the URL sets options only redis-py implements;
    pipelines, scans and subscriptions use a blocking pool (a burst waits for a free
    connection, at most ``timeout``, instead of failing at once)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        retry=_no_retry(),
        **_timeouts(timeout),
    )
    address = address_for(url)
    mux = Multiplexer(address, timeout=timeout) if address is not None else None
    return Clients(Redis.from_pool(pool), mux=mux)


def cluster(url: str, *, timeout: float, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Clients:
    """``redis+cluster://``: RedisCluster over the listed start-up nodes (any reachable one
    is enough to discover the slots). Node connections are capped per node, and RedisCluster
    refuses one past the cap at once: RedisClusterStore bounds its calls in flight instead."""
    parsed = parse_multi_host(url)
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.hosts],
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
        # RedisClusterStore lets max_connections calls run at once; subscriptions hold one
        # connection each besides.
        max_connections=max_connections + SUBSCRIPTION_HEADROOM,
        # retries=0: a failed command is not resent to a re-discovered node within this call;
        # the failure marks the topology stale, and the next call re-reads it (CLUSTER SLOTS).
        retry=_no_retry(),
        **_timeouts(timeout),
    )
    return Clients(client)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel master discovery with the blocking pool's wait for a free connection."""


def sentinel(url: str, *, timeout: float, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Clients:
    """``redis+sentinel://``: the current master of the service. Every new connection asks the
    Sentinels where the master is; a connection to a master that was demoted or died fails
    (READONLY and connection errors -> StoreUnavailable) and is replaced on the next call."""
    parsed = parse_multi_host(url)
    assert parsed.service is not None
    sentinel_kwargs: dict[str, Any] = {**_timeouts(timeout), "retry": _no_retry()}
    if parsed.sentinel_password:
        sentinel_kwargs["password"] = parsed.sentinel_password
    if parsed.sentinel_username:
        sentinel_kwargs["username"] = parsed.sentinel_username
    # Through Any: redis-py before 8.2 leaves Sentinel() untyped, 8.2 types it.
    manager = cast(Any, Sentinel)(list(parsed.hosts), sentinel_kwargs=sentinel_kwargs)
    kwargs: dict[str, Any] = {
        "db": parsed.db,
        "username": parsed.username,
        "password": parsed.password,
        "max_connections": max_connections,
        "timeout": timeout,  # the blocking pool's wait for a free connection
        "retry": _no_retry(),
        **_timeouts(timeout),
    }
    if parsed.tls:
        kwargs["ssl"] = True
    client = manager.master_for(parsed.service, connection_pool_class=_BlockingSentinelPool, **kwargs)
    return Clients(client, [manager.aclose])


def for_url(url: str, *, timeout: float) -> Clients:
    scheme = scheme_of(url)
    if scheme.endswith("+cluster"):
        return cluster(url, timeout=timeout)
    if scheme.endswith("+sentinel"):
        return sentinel(url, timeout=timeout)
    return single(url, timeout=timeout)
