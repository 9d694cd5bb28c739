"""The Redis store's cache-side operations: records, leases, tallies, key scans and unlinks.

:class:`RedisCacheOps` is mixed into :class:`~knowctl.store.redis.store.RedisStore`, which
holds the client and the scripts: the records (hashes), then the cache's conditional writes,
coalescing leases, key scans, unlinks and tallies. Every command goes through the store's
bounded, error-mapped calls (``_call``, ``_run``, ``_eval``), so the timeouts and the outage
mapping stay in one place. The Cluster's scan over every primary overrides ``_scan`` in
:mod:`knowctl.store.redis.cluster`; unlinks share ``_remove`` (DEL/UNLINK batches, grouped
by slot on a Cluster) with ``RedisStore.delete``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from knowctl.net.resp import Arg
from knowctl.store import keys
from knowctl.store.base import LeaseRead, check_match, check_ttl

T = TypeVar("T")


class RedisCacheOps:
    """Records, leases, tallies, key scans and unlinks; a mixin of RedisStore only."""

    # Set by RedisStore.__init__.
    _client: Redis | RedisCluster
    _delete_if_equal: AsyncScript
    _read_or_lease: AsyncScript
    _finish_lease: AsyncScript

    if TYPE_CHECKING:
        # Defined by RedisStore; mypy checks its definitions against these.
        async def _call(self, op: str, make: Callable[[], Awaitable[T]]) -> T: ...

        async def _run(self, op: str, *args: Arg) -> Any: ...

        async def _eval(
            self, op: str, script: AsyncScript, script_keys: list[str], args: list[Any]
        ) -> Any: ...

        async def _remove(self, command: str, names: Sequence[str]) -> int: ...

    # --- records (owner: callers) -------------------------------------------------------------
    async def hash_set(self, key: str, field: str, value: bytes) -> None:
        keys.check(key)
        await self._run("HSET", "HSET", key, field, value)

    async def hash_get(self, key: str, field: str) -> bytes | None:
        keys.check(key)
        value: Any = await self._run("HGET", "HGET", key, field)
        return None if value is None else bytes(value)

    async def hash_get_all(self, key: str) -> dict[str, bytes]:
        keys.check(key)
        raw: Any = await self._call("HGETALL", lambda: self._client.hgetall(key))
        return {(f.decode() if isinstance(f, bytes) else str(f)): bytes(v) for f, v in raw.items()}

    async def hash_delete(self, key: str, *fields: str) -> int:
        keys.check(key)
        if not fields:
            return 0
        removed: Any = await self._run("HDEL", "HDEL", key, *fields)
        return int(removed)

    # --- cache (owner: cache) -----------------------------------------------------------------
    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        keys.check(key)
        check_ttl(ttl)
        ms = max(1, round(ttl * 1000))
        stored: Any = await self._run("SET NX", "SET", key, value, "PX", ms, "NX")
        return bool(stored)

    async def delete_if_equal(self, key: str, value: bytes) -> bool:
        keys.check(key)
        script = self._delete_if_equal
        removed: Any = await self._eval("delete_if_equal", script, [key], [value])
        return int(removed) == 1

    async def read_or_lease(
        self, entry: str, lease: str, watch: str, token: bytes, lease_ttl: float, stale_ttl: float | None
    ) -> LeaseRead:
        for name in (entry, lease, watch):
            keys.check(name)
        check_ttl(lease_ttl)
        script = self._read_or_lease
        args = [token, max(1, round(lease_ttl * 1000)), -1 if stale_ttl is None else round(stale_ttl * 1000)]
        raw: Any = await self._eval("read_or_lease", script, [entry, lease, watch], args)
        value, fresh, leased = raw
        return LeaseRead(None if value is None else bytes(value), fresh == 1, leased == 1)

    async def finish_lease(
        self,
        lease: str,
        watch: str,
        token: bytes,
        channel: str,
        message: bytes,
        *,
        entry: str | None = None,
        value: bytes = b"",
        ttl: float = 0.0,
    ) -> bool:
        names = [lease, watch]
        args: list[Any] = [token, channel, message]
        if entry is not None:
            check_ttl(ttl)
            names.append(entry)
            args += [value, max(1, round(ttl * 1000))]
        for name in (*names, channel):
            keys.check(name)
        script = self._finish_lease
        mine: Any = await self._eval("finish_lease", script, names, args)
        return int(mine) == 1

    async def scan_keys(self, match: str, cursor: int = 0, count: int = 1000) -> tuple[int, list[str]]:
        keys.check(match)
        check_match(match)
        next_cursor, found = await self._call("SCAN", lambda: self._scan(match, cursor, max(1, count)))
        return next_cursor, [k.decode() if isinstance(k, bytes) else str(k) for k in found]

    async def _scan(self, match: str, cursor: int, count: int) -> tuple[int, list[Any]]:
        assert isinstance(self._client, Redis)  # RedisClusterStore scans node by node
        next_cursor, found = await self._client.scan(cursor=cursor, match=match, count=count)
        return int(next_cursor), list(found)

    async def unlink(self, *names: str) -> int:
        return await self._remove("UNLINK", names)

    async def tally_add(self, key: str, counts: Mapping[str, int], ttl: float) -> None:
        keys.check(key)
        check_ttl(ttl)
        if not counts:
            return
        ms = max(1, round(ttl * 1000))

        async def run() -> None:
            pipe = self._client.pipeline(transaction=False)
            for member, n in counts.items():
                pipe.zincrby(key, int(n), member)
            pipe.pexpire(key, ms)
            await pipe.execute()

        await self._call("ZINCRBY", run)

    async def tally_top(self, key: str, limit: int) -> list[tuple[str, int]]:
        keys.check(key)
        if limit <= 0:
            return []
        raw: Any = await self._call(
            "ZREVRANGE", lambda: self._client.zrevrange(key, 0, limit - 1, withscores=True)
        )
        return [(m.decode() if isinstance(m, bytes) else str(m), int(s)) for m, s in raw]
