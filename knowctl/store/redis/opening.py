"""The Redis backend that a ``redis*://`` URL names: its clients, then the store kind."""

from __future__ import annotations

from knowctl.store.redis.clients import for_url
from knowctl.store.redis.cluster import RedisClusterStore
from knowctl.store.redis.sentinel import RedisSentinelStore
from knowctl.store.redis.store import RedisStore
from knowctl.store.urls import scheme_of


def open_redis_store(url: str, *, timeout: float) -> RedisStore:
    """The bare Redis backend for a ``redis*://`` URL (open_store adds what goes around it)."""
    made = for_url(url, timeout=timeout)
    scheme = scheme_of(url)
    kind: type[RedisStore] = RedisStore
    if scheme.endswith("+cluster"):
        kind = RedisClusterStore
    elif scheme.endswith("+sentinel"):
        kind = RedisSentinelStore
    return kind(made.client, url=url, timeout=timeout, closers=made.closers, mux=made.mux)
