"""The in-process cache layer (L1): least-recently-used, bounded by entries and by bytes,
each entry with its own expiry. Single event loop, no awaits: every method is atomic.

The clock is injected so tests drive expiry; eviction (for room, not for age) is counted.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(slots=True)
class _Item(Generic[V]):
    value: V
    size: int
    expires_at: float


class LRU(Generic[V]):
    """``max_entries`` or ``max_bytes`` of 0 turns the layer off (nothing is kept)."""

    def __init__(self, max_entries: int, max_bytes: int, *, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, _Item[V]] = OrderedDict()
        self.bytes = 0
        self.evictions = 0  # dropped to make room (not expiry, not invalidation)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        """The keys, oldest first (a snapshot: safe while the cache changes)."""
        return iter(list(self._items))

    def get(self, key: str) -> V | None:
        """The live value of ``key`` (now most recently used), or None. Expired entries stay
        until evicted, so :meth:`peek` can still offer them as a last resort."""
        item = self._items.get(key)
        if item is None or item.expires_at <= self._clock():
            return None
        self._items.move_to_end(key)
        return item.value

    def peek(self, key: str) -> V | None:
        """The value of ``key`` even if expired, without touching its recency."""
        item = self._items.get(key)
        return None if item is None else item.value

    def put(self, key: str, value: V, size: int, ttl: float) -> bool:
        """Keep ``value`` for ``ttl`` seconds; False when it can never fit (or ttl <= 0)."""
        if ttl <= 0 or size > self.max_bytes or self.max_entries <= 0:
            self.pop(key)
            return False
        self.pop(key)
        self._items[key] = _Item(value, size, self._clock() + ttl)
        self.bytes += size
        self._make_room()
        return True

    def pop(self, key: str) -> V | None:
        item = self._items.pop(key, None)
        if item is None:
            return None
        self.bytes -= item.size
        return item.value

    def drop(self, match: Callable[[str], bool]) -> int:
        """Remove every key for which ``match`` is true; return how many."""
        doomed = [k for k in self._items if match(k)]
        for key in doomed:
            self.pop(key)
        return len(doomed)

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def _make_room(self) -> None:
        # Pure recency: an expired entry is rarely read again, so it drifts to the cold end
        # and goes first anyway; scanning for expired entries on every put would cost O(n).
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            _, item = self._items.popitem(last=False)
            self.bytes -= item.size
            self.evictions += 1
