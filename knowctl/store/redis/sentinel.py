"""``redis+sentinel://``: the Redis store on the master that the Sentinels name.

New connections ask the Sentinels where the master is (redis-py's SentinelConnectionPool),
so a dead master is left behind as soon as its connections fail. A master that is still
alive but no longer the master (a manual ``SENTINEL FAILOVER``, or a partition that a
majority of Sentinels saw) is different: Sentinel demotes it only some seconds later, and
until then it accepts writes that the new master never sees. So at most once per
``MASTER_CHECK_S``, while calls are being made, the store asks the Sentinels in the
background; when they name another master, every pooled connection is dropped and the next
calls connect to the new one. (Run the master with ``min-replicas-to-write 1`` to make a
stale master refuse writes by itself: its NOREPLICAS errors count as unavailability.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis import exceptions as rexc
from redis.asyncio import Redis

from knowctl.store.redis.store import RedisStore

log = logging.getLogger("knowctl.store")

T = TypeVar("T")

MASTER_CHECK_S = 1.0


class RedisSentinelStore(RedisStore):
    _checked_at = -MASTER_CHECK_S
    _check: asyncio.Task[None] | None = None

    async def _call(self, op: str, make: Callable[[], Awaitable[T]]) -> T:
        now = time.monotonic()
        if now - self._checked_at >= MASTER_CHECK_S and (self._check is None or self._check.done()):
            self._checked_at = now
            self._check = asyncio.get_running_loop().create_task(self._check_master())
        return await super()._call(op, make)

    async def _check_master(self) -> None:
        assert isinstance(self._client, Redis)
        pool: Any = self._client.connection_pool  # redis_clients._BlockingSentinelPool
        current = pool.master_address
        if current is None:  # not connected yet: the first connection will ask
            return
        with contextlib.suppress(TimeoutError, rexc.RedisError, OSError):
            async with asyncio.timeout(self._timeout):
                named = await pool.sentinel_manager.discover_master(pool.service_name)
                if tuple(named) != tuple(current):
                    log.warning("store %s: the Sentinels name a new master; reconnecting", self.describe())
                    pool.master_address = tuple(named)
                    await pool.disconnect(inuse_connections=True)

    async def close(self) -> None:
        if self._check is not None:
            self._check.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._check
        await super().close()
