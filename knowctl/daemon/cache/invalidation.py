"""Invalidation of the answer cache: entries removed by pattern from the store and from L1,
and the cache channel's news between daemons that makes every L1 drop them too.

- ``invalidate`` scans the store for the pattern, unlinks in batches, drops the matches
  from this daemon's L1 and tells the others (the pattern itself when everything matched
  went, else the keys); then runs the hooks (a CDN purge), whose failures never undo it.
- Each daemon hears the channel (``ChannelListener``); its own messages carry its id and
  are skipped. News that is not about L1s (the coalescer's) is handed on. After a lost
  subscription the L1 is forgotten: invalidations sent meanwhile are lost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from knowctl.daemon.cache import metrics as cm
from knowctl.daemon.channel import ChannelListener
from knowctl.daemon.lru import LRU
from knowctl.policy import cachekey
from knowctl.store import Keys, Notifications, StoreUnavailable, keys

log = logging.getLogger("knowctl.cache")

SCAN_COUNT = 1000  # keys Redis examines per SCAN step: each step stays short
UNLINK_BATCH = 1000
L1_DROP_BATCH = 1000  # keys per "drop these" message to other daemons
SAMPLE = 10

INVALIDATE_PATTERN = b"I"  # I sender \n glob: drop matching L1 entries
INVALIDATE_KEYS = b"K"  # K sender \n key \n key ...: drop these L1 entries

InvalidationHook = Callable[[list[str]], Awaitable[None]]


class InvalidationStore(Keys, Notifications, Protocol):
    """What invalidation needs of the store: scans and unlinks, and the cache channel."""


class Invalidation:
    """The answer cache's removals and its news between daemons (one per AnswerCache)."""

    def __init__(
        self,
        store: InvalidationStore,
        l1: LRU[Any],
        *,
        shared: bool,
        daemon_id: str,
        l1_changed: Callable[[], None],
        store_failed: Callable[[StoreUnavailable], None],
        on_other: Callable[[bytes, str, bytes], None],
    ) -> None:
        """``l1_changed()`` after entries left the L1; ``on_other(kind, head, payload)`` for
        the channel's messages that are not about L1s."""
        self._store = store
        self._l1 = l1
        self._shared = shared
        self._id = daemon_id
        self._l1_changed = l1_changed
        self._store_failed = store_failed
        self._on_other = on_other
        self._hooks: list[InvalidationHook] = []
        self.invalidations = 0
        self.invalidated_keys = 0
        self.listener = ChannelListener(
            store, keys.cache_channel(), self.dispatch, self.on_subscribed, name="cache-bus"
        )

    def on_invalidate(self, hook: InvalidationHook) -> None:
        self._hooks.append(hook)

    async def drop_everywhere(self, cache_keys: list[str], *, local: bool = True) -> None:
        if local:
            for key in cache_keys:
                self._l1.pop(key)
            self._l1_changed()
        for start in range(0, len(cache_keys), L1_DROP_BATCH):
            batch = "\n".join(cache_keys[start : start + L1_DROP_BATCH])
            await self.broadcast(INVALIDATE_KEYS, batch)

    async def invalidate(self, pattern: str, *, dry_run: bool = False, limit: int = 100) -> dict[str, Any]:
        regex = cachekey.pattern_regex(pattern)  # BadPattern (a ValueError) when refused
        found = await self._scan(keys.cache_entries_match(pattern))
        matched = [k for k in (keys.cache_key_of(e) for e in found) if k is not None]
        if not self._shared:  # entries only in L1 (their store write failed) count too
            seen = set(matched)
            matched += [k for k in self._l1 if regex.fullmatch(k) and k not in seen]
        result: dict[str, Any] = {
            "pattern": pattern,
            "dry_run": dry_run,
            "matched": len(matched),
            "deleted": 0,
            "remaining": len(matched),
            "sample": matched[:SAMPLE],
        }
        if dry_run:
            return result
        doomed = matched if limit == 0 else matched[:limit]
        for start in range(0, len(doomed), UNLINK_BATCH):
            batch = [keys.cache_entry(k) for k in doomed[start : start + UNLINK_BATCH]]
            await self._store.unlink(*batch)
        everything = len(doomed) == len(matched)
        gone = set(doomed)
        self._l1.drop((lambda k: regex.fullmatch(k) is not None) if everything else gone.__contains__)
        self._l1_changed()
        if everything:
            await self.broadcast(INVALIDATE_PATTERN, pattern)
        else:
            for start in range(0, len(doomed), L1_DROP_BATCH):
                await self.broadcast(INVALIDATE_KEYS, "\n".join(doomed[start : start + L1_DROP_BATCH]))
        self.invalidations += 1
        self.invalidated_keys += len(doomed)
        cm.INVALIDATIONS.inc()
        cm.INVALIDATED_KEYS.inc(len(doomed))
        for hook in self._hooks:
            try:
                await hook(doomed)
            except Exception:  # a hook (CDN purge) must never undo the invalidation
                log.exception("cache: invalidation hook failed")
        result.update(deleted=len(doomed), remaining=len(matched) - len(doomed))
        return result

    async def _scan(self, match: str) -> list[str]:
        found: dict[str, None] = {}  # SCAN may return a key twice
        cursor = 0
        while True:
            cursor, batch = await self._store.scan_keys(match, cursor, SCAN_COUNT)
            found.update(dict.fromkeys(batch))
            if cursor == 0:
                return list(found)

    # --- news between daemons ----------------------------------------------------------------
    async def broadcast(self, kind: bytes, text: str) -> None:
        if not self._shared:
            return
        try:
            await self._store.publish(keys.cache_channel(), kind + self._id.encode() + b"\n" + text.encode())
        except StoreUnavailable as exc:
            self._store_failed(exc)

    def on_subscribed(self, resumed: bool) -> None:
        if resumed:  # invalidations sent while we were away are lost: forget L1
            self._l1.clear()
            self._l1_changed()

    def dispatch(self, raw: bytes) -> None:
        kind, rest = raw[:1], raw[1:]
        head, _, payload = rest.partition(b"\n")
        if kind in (INVALIDATE_PATTERN, INVALIDATE_KEYS):
            if head.decode(errors="replace") == self._id:
                return  # ours: done already
            text = payload.decode(errors="replace")
            if kind == INVALIDATE_PATTERN:
                try:
                    regex = cachekey.pattern_regex(text)
                    self._l1.drop(lambda k: regex.fullmatch(k) is not None)
                except ValueError:
                    return
            else:
                for key in text.split("\n"):
                    self._l1.pop(key)
            self._l1_changed()
        else:
            self._on_other(kind, head.decode(errors="replace"), payload)
