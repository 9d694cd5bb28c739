"""A circuit breaker in front of a shared store, so an outage costs milliseconds, not timeouts.

``open_store`` wraps every Redis store in a :class:`BreakerStore`. While the breaker is
closed, calls go through and each is bounded by the store's own timeout. It opens when the
store has not answered a single call for ``open_after`` seconds and at least
``FAILURES_TO_OPEN`` calls failed meanwhile: a timeout while other calls succeed is overload
(a busy event loop, a full pool), which the components handle by retrying, not an outage.
While open, every call fails at once with :class:`CircuitOpen`, and one background task
pings the store every ``probe_every`` seconds; the first ping answered closes the breaker
(Redis-side scripts are reloaded by the backend on NOSCRIPT, so a restarted, empty server
needs nothing else).

Being declared down is expensive for the components (their local windows start full, see
knowctl/daemon/windows/degraded.py), hence the conservative opening rule. The breaker logs one line
when it opens and one when it closes, and tells listeners (the components, the metric).

A store that restarts empty faster than the breaker opens would silently lose the windows'
history. So the store holds an epoch (a random id, ``knowctl:epoch``); after any failed call
the next call first re-reads it (one GET, shared by concurrent calls), and a changed epoch
is told to the listeners as an outage that has just ended, so they recover as after one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from knowctl.store import keys
from knowctl.store.base import (
    Store,
    StoreUnavailable,
    Subscription,
)

log = logging.getLogger("knowctl.store")

T = TypeVar("T")

FAILURES_TO_OPEN = 3
# Floors for the derived intervals (a 50 ms timeout would otherwise open after 200 ms).
OPEN_AFTER_MIN_S = 0.5
PROBE_MIN_S = 0.5

Listener = Callable[[bool], None]  # called with True when the store is up again, False when down

EPOCH_KEY = f"{keys.PREFIX}epoch"
EPOCH_TTL_S = 10 * 365 * 86400.0  # "forever", but the store API wants a TTL


P = ParamSpec("P")


def _guarded(
    method: Callable[Concatenate[Store, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[BreakerStore, P], Coroutine[Any, Any, T]]:
    """``method`` of the wrapped store, called through the breaker."""
    name = method.__name__

    async def through_breaker(self: BreakerStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        call: Callable[P, Awaitable[T]] = getattr(self.inner, name)
        return await self._guard(lambda: call(*args, **kwargs))

    through_breaker.__name__ = through_breaker.__qualname__ = name
    through_breaker.__doc__ = method.__doc__
    return through_breaker


class CircuitOpen(StoreUnavailable):
    """The breaker is open: the store was not asked (it did not answer recently)."""


@dataclass(slots=True)
class BreakerState:
    """The breaker's decisions, pure: the clock is passed in."""

    open_after: float
    failures_to_open: int = FAILURES_TO_OPEN
    is_open: bool = False
    opened_at: float = 0.0
    last_success: float = -math.inf
    failures: int = 0  # since the last success

    def success(self, now: float) -> bool:
        """Record an answered call; True if that closes an open breaker."""
        self.last_success = now
        self.failures = 0
        if self.is_open:
            self.is_open = False
            return True
        return False

    def failure(self, now: float) -> bool:
        """Record a failed call; True if that opens the breaker."""
        self.failures += 1
        if self.is_open:
            return False
        if self.failures >= self.failures_to_open and now - self.last_success >= self.open_after:
            self.is_open = True
            self.opened_at = now
            return True
        return False


def intervals(timeout: float) -> tuple[float, float]:
    """(open_after, probe_every) for a store timeout: a few timeouts, at least the floors."""
    return max(OPEN_AFTER_MIN_S, 4 * timeout), max(PROBE_MIN_S, 2 * timeout)


class BreakerStore(Store):
    """A Store that delegates to ``inner`` through a circuit breaker (see the module doc)."""

    def __init__(self, inner: Store, *, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.backend = inner.backend  # the instance reports its backend
        open_after, self.probe_every = intervals(timeout)
        self.state = BreakerState(open_after)
        self._clock = clock
        self._listeners: list[Listener] = []
        self._loss_listeners: list[Callable[[], None]] = []
        self._prober: asyncio.Task[None] | None = None
        self._closed = False
        self._epoch: bytes | None = None  # the store's epoch as last read
        self._suspect = True  # re-read the epoch before the next call
        self._was_open = False  # the listeners heard of an outage since the last read
        self._verifying: asyncio.Task[bool] | None = None

    # --- the breaker ------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.state.is_open

    @property
    def available(self) -> bool:
        return not self.state.is_open

    def on_availability(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def on_state_lost(self, listener: Callable[[], None]) -> None:
        self._loss_listeners.append(listener)

    def _succeeded(self) -> None:
        if self.state.success(self._clock()):
            down_s = self._clock() - self.state.opened_at
            log.warning("store %s answers again after %.1fs: shared state resumes", self.describe(), down_s)
            self._tell(True)

    def _failed(self, exc: StoreUnavailable) -> None:
        self._suspect = True
        if self.state.failure(self._clock()):
            self._was_open = True
            log.warning(
                "store %s unreachable, running degraded (local windows, in-process cache) until it "
                "answers again: %s",
                self.describe(),
                exc,
            )
            self._tell(False)
            if not self._closed and (self._prober is None or self._prober.done()):
                self._prober = asyncio.get_running_loop().create_task(self._probe(), name="store-probe")

    def _tell(self, up: bool) -> None:
        for listener in self._listeners:
            listener(up)

    async def _probe(self) -> None:
        while self.state.is_open and not self._closed:
            await asyncio.sleep(self.probe_every)
            try:
                await self.inner.ping()
            except StoreUnavailable:
                continue
            self._succeeded()

    async def _guard(self, make: Callable[[], Awaitable[T]]) -> T:
        if self.state.is_open:
            raise CircuitOpen(f"{self.describe()}: the store is unreachable (circuit open)")
        try:
            if self._suspect:
                await self._verify()
            result = await make()
        except StoreUnavailable as exc:
            self._failed(exc)
            raise
        self._succeeded()
        return result

    async def _verify(self) -> None:
        """Re-read the epoch once for all waiting calls; raise StoreUnavailable when it changed,
        so the caller plans its call again now that the listeners know."""
        task = self._verifying
        if task is None:
            task = asyncio.get_running_loop().create_task(self._read_epoch())
            self._verifying = task
            task.add_done_callback(self._verified)
        if await asyncio.shield(task):
            raise StoreUnavailable(f"{self.describe()}: the store restarted without its state")

    def _verified(self, task: asyncio.Task[bool]) -> None:
        self._verifying = None
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter was cancelled

    async def _read_epoch(self) -> bool:
        """True if the store lost its state while the listeners were not told of an outage."""
        seen = await self.inner.get(EPOCH_KEY)
        if seen is None:
            await self.inner.set_if_absent(EPOCH_KEY, uuid.uuid4().hex.encode(), EPOCH_TTL_S)
            seen = await self.inner.get(EPOCH_KEY)
        changed = self._epoch is not None and seen != self._epoch
        lost = changed and not self._was_open
        self._epoch, self._suspect, self._was_open = seen, False, False
        if lost:
            log.warning(
                "store %s restarted without its state: recovering as after an outage", self.describe()
            )
            self._tell(False)
            self._tell(True)
        if changed:  # whether or not an outage was told: the windows lost their history
            for listener in self._loss_listeners:
                listener()
        return lost

    # --- Store --------------------------------------------------------------------------------
    def describe(self) -> str:
        return self.inner.describe()

    async def ping(self) -> float:
        return await self._guard(self.inner.ping)

    async def close(self) -> None:
        self._closed = True
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        await self.inner.close()

    # Every call with I/O goes through the breaker; the delegations are generated from the
    # Store interface itself (the signatures stay the interface's).
    get = _guarded(Store.get)
    set = _guarded(Store.set)
    acquire = _guarded(Store.acquire)
    acquire_any = _guarded(Store.acquire_any)
    record = _guarded(Store.record)
    adjust = _guarded(Store.adjust)
    usage = _guarded(Store.usage)
    publish = _guarded(Store.publish)
    hash_set = _guarded(Store.hash_set)
    hash_get = _guarded(Store.hash_get)
    hash_get_all = _guarded(Store.hash_get_all)
    set_if_absent = _guarded(Store.set_if_absent)
    delete_if_equal = _guarded(Store.delete_if_equal)
    read_or_lease = _guarded(Store.read_or_lease)
    finish_lease = _guarded(Store.finish_lease)
    scan_keys = _guarded(Store.scan_keys)

    def subscribe(self, channel: str) -> Subscription:
        return _GuardedSubscription(self, channel)

    # Calls that do no I/O (nothing to delete, unlink or add) skip the breaker: their
    # "success" says nothing about the store, and must not close an open breaker.
    async def delete(self, *keys: str) -> int:
        return await self._guard(lambda: self.inner.delete(*keys)) if keys else 0

    async def unlink(self, *keys: str) -> int:
        return await self._guard(lambda: self.inner.unlink(*keys)) if keys else 0

    async def hash_delete(self, key: str, *fields: str) -> int:
        return await self._guard(lambda: self.inner.hash_delete(key, *fields)) if fields else 0

    async def tally_add(self, key: str, counts: Mapping[str, int], ttl: float) -> None:
        if counts:
            await self._guard(lambda: self.inner.tally_add(key, counts, ttl))

    async def tally_top(self, key: str, limit: int) -> list[tuple[str, int]]:
        return await self._guard(lambda: self.inner.tally_top(key, limit)) if limit > 0 else []


class _GuardedSubscription(Subscription):
    """A subscription whose (re)connection goes through the breaker, and whose loss counts
    as a failure: a daemon with no traffic still notices an outage through its listeners."""

    def __init__(self, store: BreakerStore, channel: str) -> None:
        self._store = store
        self._inner = store.inner.subscribe(channel)

    async def start(self) -> None:
        await self._store._guard(self._inner.start)

    async def __anext__(self) -> bytes:
        try:
            return await self._inner.__anext__()
        except StoreUnavailable as exc:
            self._store._failed(exc)
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()
