"""The answer cache: an in-process LRU (L1) in front of the shared store (L2), stale copies
for fallback, and coalescing of identical misses (pattern invalidation and the news between
daemons' L1s: ``invalidation.py``).

- One store entry per key holds the answer and when it was stored; it lives
  ``cache_l2_ttl + cache_stale_ttl`` seconds: fresh for the first ``cache_l2_ttl``, a stale
  fallback after that. Invalidation removes both at once.
- With ``memory://`` the store is this process, so "L2" is an in-process dict too; the
  entry counts and bytes reported for L1 are the LRU's own, never the store's.
- A hit costs one dict lookup (L1) or one store call (L2) and a ``struct`` unpack: no JSON.
  On a shared store that call also takes the coalescing lease when the entry is not fresh
  (``Store.read_or_lease``) and hands it to the caller for its flight; the save stores the
  answer, releases the lease and tells any waiting daemon in one call
  (``Store.finish_lease``): a miss costs two cache round trips in all.
- Store errors degrade to misses and skipped writes; they never fail a request. While the
  store's breaker is open the store is not even asked (L1 only), and the breaker, not this
  module, logs the outage: once, not once per request.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from knowctl.daemon import metrics
from knowctl.daemon.cache import blobs
from knowctl.daemon.cache import metrics as cm
from knowctl.daemon.cache.coalesce import SAVED, Coalescer
from knowctl.daemon.cache.invalidation import Invalidation, InvalidationHook
from knowctl.daemon.context import CallContext
from knowctl.daemon.contracts import Answer, Cached, Flight, Lookup
from knowctl.daemon.lru import LRU
from knowctl.policy import cachekey
from knowctl.policy.paths import Surface
from knowctl.policy.wire import interactions
from knowctl.policy.wire.complete import is_complete
from knowctl.store import Health, Keys, Leases, Notifications, StoreUnavailable, keys

log = logging.getLogger("knowctl.cache")


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """What the answer cache needs of the settings (built by knowctl.daemon.config.cache_config)."""

    enabled: bool
    l1_ttl: float
    l2_ttl: float
    stale_ttl: float  # how long a stale copy is kept after l2_ttl, for fallback
    l1_max_entries: int
    l1_max_bytes: int
    coalesce_timeout: float


class CacheStore(Health, Keys, Leases, Notifications, Protocol):
    """What the answer cache needs of the store: entries and leases, scans for
    invalidation, and the channel that tells other daemons' L1s."""


@dataclass(frozen=True, slots=True)
class _Entry:
    answer: Answer
    stored_at: float


@dataclass(slots=True)
class _Counts:
    hits: dict[str, int] = field(default_factory=lambda: {"l1": 0, "l2": 0})
    misses: dict[str, int] = field(default_factory=lambda: {"l1": 0, "l2": 0})
    stale_served: int = 0
    saves: int = 0
    refused: int = 0
    coalesced: int = 0
    store_errors: int = 0


def _rate(hits: int, misses: int) -> float | None:
    return round(hits / (hits + misses), 4) if hits + misses else None


class AnswerCache:
    """The ResponseCache of knowctl.daemon.contracts."""

    def __init__(
        self, config: CacheConfig, store: CacheStore, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.enabled = config.enabled
        self._store = store
        self._clock = clock
        self._l1_ttl = config.l1_ttl
        self._l2_ttl = config.l2_ttl
        self._keep = config.l2_ttl + config.stale_ttl
        self.shared = store.backend != "memory"
        self._l1: LRU[_Entry] = LRU(config.l1_max_entries, config.l1_max_bytes, clock=clock)
        self._evictions_seen = 0
        self.counts = _Counts()
        self._id = uuid.uuid4().hex
        self.coalescer = Coalescer(
            store,
            shared=self.shared,
            timeout=config.coalesce_timeout,
            daemon_id=self._id,
            read_or_lease=self.read_or_lease,
            on_coalesced=self._coalesced,
        )
        self._invalidation = Invalidation(
            store,
            self._l1,
            shared=self.shared,
            daemon_id=self._id,
            l1_changed=self._l1_gauges,
            store_failed=self.store_failed,
            on_other=self.coalescer.on_message,
        )

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self, wait_s: float = 1.0) -> None:
        """Listen for other daemons' news; returns once subscribed (or after ``wait_s``)."""
        if not self.shared:
            return
        await self._invalidation.listener.start(wait_s)

    async def close(self) -> None:
        await self._invalidation.listener.close()
        await self.coalescer.close()

    def on_invalidate(self, hook: InvalidationHook) -> None:
        """Call ``hook(cache keys)`` after this daemon removed entries (e.g. to purge a CDN)."""
        self._invalidation.on_invalidate(hook)

    # --- ResponseCache -----------------------------------------------------------------------
    def key_for(self, ctx: CallContext) -> str | None:
        call = ctx.call
        if not self.enabled or not call.generates or ctx.payload is None or not call.model:
            return None
        if call.surface is Surface.INTERACTIONS and interactions.creates_state(ctx.payload):
            return None  # an answer that leaves state at Google must be Google's own
        topic: str | None = ctx.header.get("x-knowctl-topic", "").strip() or None
        if topic is not None:
            try:
                cachekey.check_topic(topic)
            except ValueError:
                topic = None  # an unusable name is only a label: cache under gen:
        # Only the topic API (which marks its own calls) shares answers across callers.
        if topic is not None and ctx.notes.topic == topic:
            scope = cachekey.TOPIC_SCOPE
        else:
            found = ctx.identity.cache_scope if ctx.identity is not None else "shared"
            if found is None:  # this caller cannot be told from others: never cached
                return None
            scope = found
        return cachekey.cache_key(
            ctx.payload,
            model=call.model,
            family=call.family.value,
            streaming=ctx.streaming,
            scope=scope,
            topic=topic,
            surface=call.surface.value,
            revision=ctx.header.get("api-revision"),
        )

    def lookup_local(self, key: str) -> Cached | None:
        entry = self._l1.get(key)
        self._count("l1", entry is not None)
        if entry is None:
            return None
        return Cached(entry.answer, "L1", max(0.0, self._clock() - entry.stored_at))

    async def lookup_shared(self, key: str) -> Lookup:
        now = self._clock()
        lease: bytes | None = None
        if self.shared and self._store_usable():
            # One round trip: the entry, or the lease for the flight that follows a miss.
            token = self.coalescer.new_token()
            try:
                got, leased = await self._lease_read(key, token, False)
            except StoreUnavailable as exc:
                self.store_failed(exc)
                got, leased = None, False
            lease = token if leased else None
        else:
            got = await self._read(key)
            if got is not None and now - got.stored_at < self._l2_ttl:
                self._promote(key, got, len_hint=None)
            else:
                got = None
        self._count("l2", got is not None)
        if got is None:
            return Lookup(lease=lease)
        return Lookup(Cached(got.answer, "L2", max(0.0, now - got.stored_at)))

    async def lookup(self, key: str) -> Lookup:
        """L1, then L2: what the pipeline does, in one call (tests, tools)."""
        local = self.lookup_local(key)
        return Lookup(local) if local is not None else await self.lookup_shared(key)

    def release(self, key: str, lease: bytes) -> None:
        self.coalescer.release(key, lease)

    async def read_or_lease(self, key: str, token: bytes, lead_anyway: bool) -> tuple[Answer | None, bool]:
        """For the coalescer: (the fresh answer of ``key`` in the store, or None; whether the
        lease of ``key`` is now ours under ``token``). ``lead_anyway``: take a free lease even
        when a fresh answer exists. Raises StoreUnavailable."""
        got, leased = await self._lease_read(key, token, lead_anyway)
        return (got.answer if got is not None else None), leased

    async def _lease_read(self, key: str, token: bytes, lead_anyway: bool) -> tuple[_Entry | None, bool]:
        """The fresh entry (promoted to L1), and whether the lease is ours: one round trip,
        unless the store's clock and ours disagree on freshness."""
        entry, lease, watch = keys.cache_entry(key), keys.cache_lease(key), keys.cache_watch(key)
        ttl, stale = self.coalescer.lease_ttl, self._keep - self._l2_ttl
        got = await self._store.read_or_lease(entry, lease, watch, token, ttl, None if lead_anyway else stale)
        decoded = blobs.decode(got.value) if got.value is not None else None
        found = _Entry(decoded[1], decoded[0]) if decoded is not None else None
        if found is not None and self._clock() - found.stored_at < self._l2_ttl:
            self._promote(key, found, len_hint=len(got.value or b""))
        else:
            found = None
        if lead_anyway:
            return found, got.leased
        if found is not None:
            if got.leased:  # the store deems it stale (its clock runs ahead of ours)
                self.coalescer.release(key, token)
            return found, False
        if got.fresh:  # the store deems fresh what our clock finds stale: ask for the lease
            got = await self._store.read_or_lease(entry, lease, watch, token, ttl, None)
        return None, got.leased

    async def stale(self, key: str) -> Cached | None:
        now = self._clock()
        got = await self._read(key)
        if got is None:
            got = self._l1.peek(key)  # the store is gone or lost it: the local copy will do
        if got is None or now - got.stored_at >= self._keep:
            return None
        self.counts.stale_served += 1
        cm.STALE_SERVED.inc()
        return Cached(got.answer, "STALE", max(0.0, now - got.stored_at))

    async def save(self, key: str, answer: Answer) -> None:
        self.coalescer.saving(key)  # before any await: see Coalescer._after_save
        if not is_complete(answer.chunks, answer.surface):
            self.counts.refused += 1
            cm.SAVES_BY("refused").inc()
            self.coalescer.saved(key)
            return
        now = self._clock()
        blob = blobs.encode(answer, now)
        self._l1_put(key, _Entry(answer, now), len(blob), self._l1_ttl)
        self.counts.saves += 1
        cm.SAVES_BY("stored").inc()
        token = self.coalescer.take_lease(key)  # taken before any await: ours to release
        if self._store_usable():
            try:
                if token is None:
                    await self._store.set(keys.cache_entry(key), blob, self._keep)
                else:  # store, release the lease and tell the waiting daemons, at once
                    await self._store.finish_lease(
                        keys.cache_lease(key),
                        keys.cache_watch(key),
                        token,
                        keys.cache_channel(),
                        SAVED + key.encode(),
                        entry=keys.cache_entry(key),
                        value=blob,
                        ttl=self._keep,
                    )
            except StoreUnavailable as exc:
                self.store_failed(exc)
        self.coalescer.saved(key)

    def flight(self, key: str, lease: bytes | None = None) -> AbstractAsyncContextManager[Flight]:
        return self.coalescer.flight(key, lease)

    # --- for the topic API ---------------------------------------------------------------------
    async def peek(self, key: str) -> Cached | None:
        """The fresh answer of ``key`` from L1 or L2, without counting a lookup or promoting."""
        now = self._clock()
        got = self._l1.get(key) or await self._read(key)
        if got is None or now - got.stored_at >= self._l2_ttl:
            return None
        return Cached(got.answer, "L1" if key in self._l1 else "L2", max(0.0, now - got.stored_at))

    @property
    def l2_ttl(self) -> float:
        return self._l2_ttl

    async def drop_everywhere(self, cache_keys: list[str], *, local: bool = True) -> None:
        """Drop these keys from the L1 of every daemon (``local``: this one's too); used after
        their store entries were replaced."""
        await self._invalidation.drop_everywhere(cache_keys, local=local)

    # --- invalidation --------------------------------------------------------------------------
    async def invalidate(self, pattern: str, *, dry_run: bool = False, limit: int = 100) -> dict[str, Any]:
        """Remove up to ``limit`` (0: all) entries matching the glob ``pattern``, stale copies
        included, from the store and from every daemon's L1."""
        return await self._invalidation.invalidate(pattern, dry_run=dry_run, limit=limit)

    # --- stats ---------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        c = self.counts
        return {
            "enabled": self.enabled,
            "degraded": self.degraded,
            "store": {"backend": self._store.backend, "shared": self.shared},
            "layers": {
                "l1": {
                    "hits": c.hits["l1"],
                    "misses": c.misses["l1"],
                    "hit_rate": _rate(c.hits["l1"], c.misses["l1"]),
                    "entries": len(self._l1),
                    "bytes": self._l1.bytes,
                    "max_entries": self._l1.max_entries,
                    "max_bytes": self._l1.max_bytes,
                    "evictions": self._l1.evictions,
                    "ttl_s": self._l1_ttl,
                },
                "l2": {
                    "hits": c.hits["l2"],
                    "misses": c.misses["l2"],
                    "hit_rate": _rate(c.hits["l2"], c.misses["l2"]),
                    "ttl_s": self._l2_ttl,
                    "stale_ttl_s": self._keep - self._l2_ttl,
                },
            },
            "hit_rate": _rate(c.hits["l1"] + c.hits["l2"], c.misses["l2"]),
            "stale_served": c.stale_served,
            "saves": c.saves,
            "refused_saves": c.refused,
            "coalesced": c.coalesced,
            "in_flight": self.coalescer.in_flight,
            "invalidations": self._invalidation.invalidations,
            "invalidated_keys": self._invalidation.invalidated_keys,
            "store_errors": c.store_errors,
        }

    @property
    def degraded(self) -> bool:
        """The store is unreachable: answers come from L1 only."""
        return not self._store.available

    # --- inside --------------------------------------------------------------------------------
    def _count(self, layer: str, hit: bool) -> None:
        if hit:
            self.counts.hits[layer] += 1
        else:
            self.counts.misses[layer] += 1
        metrics.CACHE_REQUESTS_BY(layer, "hit" if hit else "miss").inc()

    def _coalesced(self) -> None:
        self.counts.coalesced += 1
        cm.COALESCED.inc()

    def _promote(self, key: str, entry: _Entry, len_hint: int | None) -> None:
        # L1 never outlives the entry's freshness in L2.
        ttl = min(self._l1_ttl, entry.stored_at + self._l2_ttl - self._clock())
        size = len_hint or sum(len(c) for c in entry.answer.chunks) + 64
        self._l1_put(key, entry, size, ttl)

    def _l1_put(self, key: str, entry: _Entry, size: int, ttl: float) -> None:
        self._l1.put(key, entry, size, ttl)
        if self._l1.evictions != self._evictions_seen:
            cm.EVICTIONS.inc(self._l1.evictions - self._evictions_seen)
            self._evictions_seen = self._l1.evictions
        self._l1_gauges()

    def _l1_gauges(self) -> None:
        cm.L1_ENTRIES.set(len(self._l1))
        cm.L1_BYTES.set(self._l1.bytes)

    async def _read(self, key: str) -> _Entry | None:
        """The store's entry for ``key`` (fresh or stale), or None (also when unreachable)."""
        if not self._store_usable():
            return None
        try:
            blob = await self._store.get(keys.cache_entry(key))
        except StoreUnavailable as exc:
            self.store_failed(exc)
            return None
        decoded = blobs.decode(blob) if blob is not None else None
        return _Entry(decoded[1], decoded[0]) if decoded is not None else None

    def _store_usable(self) -> bool:
        return self._store.available

    def store_failed(self, exc: StoreUnavailable) -> None:
        log.debug("cache: store call failed: %s", exc)
        self.counts.store_errors += 1
        cm.STORE_ERRORS.inc()


def topic_keys(keys_: Iterable[str]) -> list[str]:
    """The topics named by some cache keys, each once, in order."""
    return list(dict.fromkeys(t for t in (cachekey.topic_of(k) for k in keys_) if t is not None))
