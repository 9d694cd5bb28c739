"""``memory://``: MemoryStore, state in this process only (the embedded default, each pod's fallback).

Every operation runs without awaiting, so on one event loop it is atomic; a lock also makes
it safe for loops in several threads. Same semantics as the Redis backend, with the clock
injected so tests can drive time.

Plain values (cached answers, mostly) are bounded by bytes like a Redis with ``maxmemory``
and ``allkeys-lru``: past ``max_bytes`` (``memory://?max_bytes=N``, default 64 MiB) the least
recently used go first. Without that bound every distinct answer stayed for the cache's
whole TTL plus its stale time, and the daemon's memory grew with the number of prompts.
Window logs are not plain values and are never evicted.

The cache-side operations (records, leases, tallies, key scans and unlinks) are a mixin,
:mod:`knowctl.store.memory.cache`, working on this class's state under its lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from knowctl.policy.windows import Window, WindowLog, capacity, claim_size, try_admit
from knowctl.store import keys
from knowctl.store.base import (
    NOT_LOOKED,
    Admission,
    Announcement,
    Candidate,
    Choice,
    Claim,
    Store,
    StoreUnavailable,
    Subscription,
    WindowUsage,
    check_candidates,
    check_ttl,
    check_window_call,
)
from knowctl.store.memory.cache import MemoryCacheOps
from knowctl.store.urls import memory_max_bytes

# A subscriber that falls this far behind loses its oldest messages rather than growing
# without bound; messages are wake-up hints, and Redis drops slow subscribers too.
SUBSCRIBER_BUFFER = 1024

_CLOSED = object()  # queued to subscribers when the store closes: ends their iteration

ITEM_OVERHEAD = 128  # bytes a plain value costs beyond its key and data (dict slot, tuple)


def _cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + ITEM_OVERHEAD


class MemoryStore(MemoryCacheOps, Store):
    backend = "memory"

    def __init__(self, url: str = "memory://", *, clock: Callable[[], float] = time.time) -> None:
        self._url = url
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (value, expires at), least recently used first
        self._values: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.max_bytes = memory_max_bytes(url)
        self.bytes = 0  # what the plain values cost (see _cost)
        self.evictions = 0  # plain values dropped for room (not expiry)
        self._logs: dict[tuple[str, str], WindowLog] = {}  # (scope, window name) -> log
        # (scope, window name) -> claimant -> (units, set at): see Store.acquire's Claim
        self._claims: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}
        self._subscribers: dict[str, set[_MemorySubscription]] = {}
        self._closed = False
        self._sweep_at = 1024

    def describe(self) -> str:
        return self._url  # no credentials in a memory URL

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("memory store is closed")

    async def ping(self) -> float:
        self._check_open()
        started = time.perf_counter()
        with self._lock:
            pass
        return time.perf_counter() - started

    async def close(self) -> None:
        self._closed = True
        with self._lock:
            subs = [s for group in self._subscribers.values() for s in group]
            self._subscribers.clear()
        for sub in subs:
            sub.push(_CLOSED)

    # --- plain keys -------------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        keys.check(key)
        self._check_open()
        with self._lock:
            item = self._values.get(key)
            if item is None:
                return None
            if item[1] <= self._clock():
                self._drop(key)
                return None
            self._values.move_to_end(key)
            return item[0]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        keys.check(key)
        check_ttl(ttl)
        self._check_open()
        with self._lock:
            self._put(key, value, self._clock() + ttl)

    async def delete(self, *names: str) -> int:
        for key in names:
            keys.check(key)
        self._check_open()
        now = self._clock()
        removed = 0
        with self._lock:
            for key in set(names):
                item = self._drop(key)
                if item is not None and item[1] > now:
                    removed += 1
        return removed

    def _put(self, key: str, value: bytes, expires_at: float) -> None:
        """Store a plain value (caller holds the lock), evicting the least recently used
        values past ``max_bytes``."""
        self._sweep()
        self._drop(key)
        data = bytes(value)
        self._values[key] = (data, expires_at)
        self.bytes += _cost(key, data)
        while self.bytes > self.max_bytes and len(self._values) > 1:
            old, (gone, _) = self._values.popitem(last=False)
            self.bytes -= _cost(old, gone)
            self.evictions += 1

    def _drop(self, key: str) -> tuple[bytes, float] | None:
        item = self._values.pop(key, None)
        if item is not None:
            self.bytes -= _cost(key, item[0])
        return item

    def _sweep(self) -> None:
        # Expired keys nobody reads again would otherwise stay forever; an occasional full
        # pass (when the dict has doubled) keeps that bounded at O(1) amortised per set.
        if len(self._values) < self._sweep_at:
            return
        now = self._clock()
        for key in [k for k, (_, exp) in self._values.items() if exp <= now]:
            self._drop(key)
        self._sweep_at = max(1024, 2 * len(self._values))

    # --- sliding windows -------------------------------------------------------------------
    def _window_logs(self, scope: str, windows: Sequence[Window]) -> list[WindowLog]:
        return [self._logs.setdefault((scope, w.name), WindowLog()) for w in windows]

    def _forget_empty(self, scope: str, windows: Sequence[Window], logs: Sequence[WindowLog]) -> None:
        # Idle scopes leave nothing behind (the Redis keys expire likewise).
        for w, log in zip(windows, logs, strict=True):
            if not log:
                self._logs.pop((scope, w.name), None)

    async def acquire(
        self,
        scope: str,
        windows: Sequence[Window],
        amounts: Sequence[int],
        *,
        share: float = 1.0,
        reservation_id: str,
        claim: Claim | None = None,
    ) -> Admission:
        check_window_call(scope, windows, amounts, reservation_id)
        caps = [capacity(w.limit, share) for w in windows]
        self._check_open()
        claimed: tuple[int, ...] = ()
        with self._lock:
            now = self._clock()
            logs = self._window_logs(scope, windows)
            held = self._others_claims(scope, windows, claim, now) if claim is not None else None
            verdict = try_admit(logs, windows, amounts, caps, reservation_id, now, held)
            if claim is not None and held is not None:
                claimed = self._set_claims(scope, windows, claim, verdict.usage, held, now, verdict.admitted)
            self._forget_empty(scope, windows, logs)
        return Admission(
            admitted=verdict.admitted,
            retry_after=verdict.retry_after,
            usage=verdict.usage,
            limits=tuple(w.limit for w in windows),
            reset_after=verdict.reset_after,
            blocked=verdict.blocked,
            claimed=claimed,
        )

    async def acquire_any(
        self,
        candidates: Sequence[Candidate],
        *,
        share: float = 1.0,
        reservation_id: str,
        claim: Claim | None = None,
        fresh: bool = False,
    ) -> Choice:
        check_candidates(candidates, reservation_id)
        self._check_open()
        rid = reservation_id
        with self._lock:
            now = self._clock()
            # As acquire.lua: a replay where it was recorded, else the first admissible in the
            # order given; candidates after the chosen one are not looked at.
            replayed = (
                None
                if fresh
                else next(
                    (
                        i
                        for i, c in enumerate(candidates)
                        for w in c.windows
                        if rid in self._logs.get((c.scope, w.name), ())
                    ),
                    None,
                )
            )
            order = [replayed] if replayed is not None else range(len(candidates))
            chosen: int | None = None
            admissions: list[Admission] = [NOT_LOOKED] * len(candidates)
            looked = []
            for i in order:
                c = candidates[i]
                logs = self._window_logs(c.scope, c.windows)
                caps = [capacity(w.limit, share) for w in c.windows]
                held = self._others_claims(c.scope, c.windows, claim, now) if claim is not None else None
                verdict = try_admit(logs, c.windows, c.amounts, caps, rid, now, held)
                looked.append((i, logs, held, verdict))
                if verdict.admitted:
                    chosen = i
                    break
            for i, logs, held, verdict in looked:
                c = candidates[i]
                claimed: tuple[int, ...] = ()
                if claim is not None and held is not None:  # kept while admitted anywhere
                    claimed = self._set_claims(
                        c.scope, c.windows, claim, verdict.usage, held, now, chosen is not None
                    )
                self._forget_empty(c.scope, c.windows, logs)
                admissions[i] = Admission(
                    admitted=verdict.admitted,
                    retry_after=verdict.retry_after,
                    usage=verdict.usage,
                    limits=tuple(w.limit for w in c.windows),
                    reset_after=verdict.reset_after,
                    blocked=verdict.blocked,
                    claimed=claimed,
                )
        if chosen is not None:
            return Choice(chosen, tuple(admissions), 0.0)
        waits = [a.retry_after for a in admissions]
        return Choice(None, tuple(admissions), min(waits))

    def _others_claims(self, scope: str, windows: Sequence[Window], claim: Claim, now: float) -> list[int]:
        held = []
        for w in windows:
            claims = self._claims.get((scope, w.name), {})
            for who, (_, at) in list(claims.items()):
                if at + claim.ttl_s <= now:
                    del claims[who]
            held.append(sum(units for who, (units, _) in claims.items() if who != claim.claimant))
        return held

    def _set_claims(
        self,
        scope: str,
        windows: Sequence[Window],
        claim: Claim,
        usage: Sequence[int],
        held: Sequence[int],
        now: float,
        admitted: bool,
    ) -> tuple[int, ...]:
        """The claimant's claims set anew (acquire.lua); a refused claimant holds none."""
        out = []
        for w, used, others in zip(windows, usage, held, strict=True):
            claims = self._claims.setdefault((scope, w.name), {})
            parts = max(claim.divisor, 1 + sum(1 for who in claims if who != claim.claimant)) + 1
            units = claim_size(w.limit, used, others, parts) if admitted else 0
            if units > 0:
                claims[claim.claimant] = (units, now)
            else:
                claims.pop(claim.claimant, None)
                if not claims:
                    del self._claims[(scope, w.name)]
            out.append(units)
        return tuple(out)

    async def record(
        self, scope: str, windows: Sequence[Window], amounts: Sequence[int], *, reservation_id: str
    ) -> None:
        check_window_call(scope, windows, amounts, reservation_id)
        self._check_open()
        with self._lock:
            now = self._clock()
            logs = self._window_logs(scope, windows)
            for w, log, amount in zip(windows, logs, amounts, strict=True):
                log.trim(w, now)
                if reservation_id not in log:
                    log.record(reservation_id, amount, now)

    async def adjust(
        self,
        scope: str,
        windows: Sequence[Window],
        reservation_id: str,
        amounts: Sequence[int],
        *,
        announce: Announcement | None = None,
    ) -> None:
        check_window_call(scope, windows, amounts, reservation_id)
        self._check_open()
        with self._lock:
            now = self._clock()
            logs = self._window_logs(scope, windows)
            for w, log, amount in zip(windows, logs, amounts, strict=True):
                log.trim(w, now)
                log.adjust(reservation_id, amount)
            self._forget_empty(scope, windows, logs)
        if announce is not None and await self.get(announce.flag) is not None:
            await self.publish(announce.channel, announce.message)

    async def usage(self, scope: str, windows: Sequence[Window]) -> list[WindowUsage]:
        check_window_call(scope, windows, None, None)
        self._check_open()
        with self._lock:
            now = self._clock()
            logs = self._window_logs(scope, windows)
            result = [
                WindowUsage(w.name, log.trim(w, now), w.limit, len(log), log.reset_after(w, now))
                for w, log in zip(windows, logs, strict=True)
            ]
            self._forget_empty(scope, windows, logs)
        return result

    # --- notifications ----------------------------------------------------------------------
    async def publish(self, channel: str, message: bytes) -> None:
        keys.check(channel)
        self._check_open()
        with self._lock:
            subs = list(self._subscribers.get(channel, ()))
        for sub in subs:
            sub.push(bytes(message))

    def subscribe(self, channel: str) -> Subscription:
        keys.check(channel)
        return _MemorySubscription(self, channel)

    def _attach(self, sub: _MemorySubscription) -> None:
        self._check_open()
        with self._lock:
            self._subscribers.setdefault(sub.channel, set()).add(sub)

    def _detach(self, sub: _MemorySubscription) -> None:
        with self._lock:
            group = self._subscribers.get(sub.channel)
            if group is not None:
                group.discard(sub)
                if not group:
                    del self._subscribers[sub.channel]


class _MemorySubscription(Subscription):
    def __init__(self, store: MemoryStore, channel: str) -> None:
        self._store = store
        self.channel = channel
        self._queue: asyncio.Queue[object] = asyncio.Queue(SUBSCRIBER_BUFFER)
        self._started = False
        self._done = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        if not self._started:
            self._loop = asyncio.get_running_loop()
            self._store._attach(self)
            self._started = True

    def push(self, item: object) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._put(item)
        else:  # published from another thread's loop: hand over to the subscriber's loop
            # RuntimeError: the subscriber's loop has closed, so nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._put, item)

    def _put(self, item: object) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(item)

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        await self.start()
        item = await self._queue.get()
        if item is _CLOSED:
            self._done = True
            raise StopAsyncIteration
        assert isinstance(item, bytes)
        return item

    async def aclose(self) -> None:
        self._done = True
        if self._started:
            self._store._detach(self)
