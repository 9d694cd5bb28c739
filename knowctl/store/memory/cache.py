"""The memory store's cache-side operations: records, leases, tallies, key scans and unlinks.

:class:`MemoryCacheOps` is mixed into :class:`~knowctl.store.memory.store.MemoryStore` and
works on its state under its lock: the plain values (``_values``, written through ``_put``
and ``_drop`` so the byte bound and the LRU order hold), the clock and the subscribers that
``finish_lease`` tells. Records and tallies keep their own tables, made on first use.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Protocol

from knowctl.store import keys
from knowctl.store.base import LeaseRead, check_ttl, match_regex


class _Listener(Protocol):
    """A subscriber as finish_lease sees it (MemoryStore's subscriptions)."""

    def push(self, item: object) -> None: ...


class MemoryCacheOps:
    """Records, leases, tallies, key scans and unlinks; a mixin of MemoryStore only."""

    # Set by MemoryStore.__init__.
    _lock: threading.Lock
    _clock: Callable[[], float]
    _values: OrderedDict[str, tuple[bytes, float]]

    if TYPE_CHECKING:
        # Defined by MemoryStore; mypy checks its definitions against these.
        @property
        def _subscribers(self) -> Mapping[str, Collection[_Listener]]: ...

        def _check_open(self) -> None: ...

        def _put(self, key: str, value: bytes, expires_at: float) -> None: ...

        def _drop(self, key: str) -> tuple[bytes, float] | None: ...

        async def delete(self, *names: str) -> int: ...

    # --- records (owner: callers) -------------------------------------------------------------
    def _hashes(self) -> dict[str, dict[str, bytes]]:
        # Created on first use so this section needs nothing from __init__.
        tables: dict[str, dict[str, bytes]] | None = self.__dict__.get("_hash_tables")
        if tables is None:
            tables = self.__dict__.setdefault("_hash_tables", {})
        return tables

    async def hash_set(self, key: str, field: str, value: bytes) -> None:
        keys.check(key)
        self._check_open()
        with self._lock:
            self._hashes().setdefault(key, {})[field] = bytes(value)

    async def hash_get(self, key: str, field: str) -> bytes | None:
        keys.check(key)
        self._check_open()
        with self._lock:
            return self._hashes().get(key, {}).get(field)

    async def hash_get_all(self, key: str) -> dict[str, bytes]:
        keys.check(key)
        self._check_open()
        with self._lock:
            return dict(self._hashes().get(key, {}))

    async def hash_delete(self, key: str, *fields: str) -> int:
        keys.check(key)
        self._check_open()
        with self._lock:
            table = self._hashes().get(key)
            if table is None:
                return 0
            removed = sum(1 for f in set(fields) if table.pop(f, None) is not None)
            if not table:
                del self._hashes()[key]
            return removed

    # --- cache (owner: cache) -----------------------------------------------------------------
    def _tallies(self) -> dict[str, tuple[dict[str, int], float]]:
        # Created on first use so this section needs nothing from __init__.
        tables: dict[str, tuple[dict[str, int], float]] | None = self.__dict__.get("_tally_tables")
        if tables is None:
            tables = self.__dict__.setdefault("_tally_tables", {})
        return tables

    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        keys.check(key)
        check_ttl(ttl)
        self._check_open()
        with self._lock:
            now = self._clock()
            item = self._values.get(key)
            if item is not None and item[1] > now:
                return False
            self._put(key, value, now + ttl)
            return True

    async def delete_if_equal(self, key: str, value: bytes) -> bool:
        keys.check(key)
        self._check_open()
        with self._lock:
            item = self._values.get(key)
            if item is None or item[1] <= self._clock() or item[0] != value:
                return False
            self._drop(key)
            return True

    async def read_or_lease(
        self, entry: str, lease: str, watch: str, token: bytes, lease_ttl: float, stale_ttl: float | None
    ) -> LeaseRead:
        for name in (entry, lease, watch):
            keys.check(name)
        check_ttl(lease_ttl)
        self._check_open()
        with self._lock:
            now = self._clock()
            item = self._live(entry, now)
            value = None if item is None else item[0]
            if item is not None and stale_ttl is not None and item[1] - now > stale_ttl:
                return LeaseRead(value, fresh=True, leased=False)
            if self._live(lease, now) is None:
                self._put(lease, token, now + lease_ttl)
                return LeaseRead(value, fresh=False, leased=True)
            self._put(watch, b"1", now + lease_ttl)
            return LeaseRead(value, fresh=False, leased=False)

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
        for name in (lease, watch, channel, *([entry] if entry is not None else [])):
            keys.check(name)
        if entry is not None:
            check_ttl(ttl)
        self._check_open()
        with self._lock:
            now = self._clock()
            if entry is not None:
                self._put(entry, value, now + ttl)
            held = self._live(lease, now)
            mine = held is not None and held[0] == token
            if mine:
                self._drop(lease)
            watched = self._live(watch, now) is not None
            self._drop(watch)
            subs = list(self._subscribers.get(channel, ())) if watched else []
        for sub in subs:
            sub.push(bytes(message))
        return mine

    def _live(self, key: str, now: float) -> tuple[bytes, float] | None:
        item = self._values.get(key)
        return item if item is not None and item[1] > now else None

    async def scan_keys(self, match: str, cursor: int = 0, count: int = 1000) -> tuple[int, list[str]]:
        keys.check(match)
        regex = match_regex(match)
        self._check_open()
        # One step returns every match: a dict scan in one process blocks nobody else.
        with self._lock:
            now = self._clock()
            found = [k for k, (_, exp) in self._values.items() if exp > now and regex.fullmatch(k)]
        return 0, found

    async def unlink(self, *names: str) -> int:
        return await self.delete(*names)

    async def tally_add(self, key: str, counts: Mapping[str, int], ttl: float) -> None:
        keys.check(key)
        check_ttl(ttl)
        self._check_open()
        with self._lock:
            now = self._clock()
            tables = self._tallies()
            table, expires = tables.get(key, ({}, 0.0))
            if expires <= now:
                table = {}
            for member, n in counts.items():
                table[member] = table.get(member, 0) + int(n)
            tables[key] = (table, now + ttl)
            for name in [k for k, (_, exp) in tables.items() if exp <= now]:
                del tables[name]

    async def tally_top(self, key: str, limit: int) -> list[tuple[str, int]]:
        keys.check(key)
        self._check_open()
        with self._lock:
            table, expires = self._tallies().get(key, ({}, 0.0))
            if expires <= self._clock():
                return []
            ranked = sorted(table.items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked[: max(0, limit)]
