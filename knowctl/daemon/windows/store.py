"""The quota windows' store access: the shared store, and this daemon's share while it is down.

Whether the store is down is the circuit breaker's call (knowctl/store/breaker.py): it opens
only when no store call at all has answered for a while. A call that fails while the breaker
stays closed is overload (a full connection pool, a busy event loop): it is retried with the
same reservation id (the store treats a repeat as a replay, so nothing is counted twice)
until the breaker decides, and if it never does the request is not admitted (the caller
queues it), since admitting blind could over-admit and the script may well have run anyway.

While the breaker is open, and while the store recovers, admissions follow the local share
windows of knowctl/daemon/windows/degraded.py: with ``claims`` (the provider quota), each daemon
admits what it had claimed in the shared windows before the outage, then its
``1/max_replicas`` of each window, so the fleet never over-admits; what it admitted alone is
written back when the store returns, so the shared windows count it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from knowctl.daemon import metrics
from knowctl.daemon.ids import unique_id
from knowctl.daemon.windows.degraded import LocalShare, Mode, WriteBack
from knowctl.policy.windows import Window
from knowctl.store import (
    NOT_LOOKED,
    Admission,
    Announcement,
    Candidate,
    Choice,
    Claim,
    Health,
    StoreUnavailable,
    Windows,
    WindowUsage,
)
from knowctl.store.breaker import intervals

log = logging.getLogger("knowctl.quota")

STORE_RETRY_PAUSE_S = 0.05
# A claim is trusted at an outage for this long after it was granted, and the store keeps it
# twice as long (so no other daemon spends units this one may still count on). At least a
# few breaker intervals: the last claim before an outage is that old when it is declared.
CLAIM_TRUST_MIN_S = 5.0


class WindowsStore(Health, Windows, Protocol):
    """What the windows need of the store: admission, and word when it is down."""


class FailoverWindows:
    """Sliding windows in the shared store, failing over to this daemon's share of them
    while the store is down (see the module doc); used by the provider quota and the callers."""

    def __init__(
        self,
        store: WindowsStore,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        *,
        replicas: int,
        timeout: float,
        start_full: bool = True,
        claims: bool = False,
    ) -> None:
        self.shared = store
        open_after, probe_every = intervals(timeout)
        # Long enough for the breaker to decide, so a failing call ends local or retried.
        self._decide_s = open_after + 2 * timeout
        trust = max(CLAIM_TRUST_MIN_S, 4 * open_after)
        self._claim = Claim(f"d-{unique_id()}", max(1, replicas), 2 * trust) if claims else None
        # Daemons notice the store's return within a probe interval of each other.
        self.local = LocalShare(
            replicas, grace_s=2 * probe_every + timeout, start_full=start_full, claim_trust_s=trust
        )
        self._spawn = spawn  # runs background work (kept referenced by the caller)
        store.on_availability(self._store_changed)
        store.on_state_lost(self.local.state_lost)

    @property
    def degraded(self) -> bool:
        return not self.shared.available

    def _store_changed(self, up: bool) -> None:
        if up:
            for back in self.local.store_up():
                self._spawn(self._write_back(back))
        else:
            self.local.store_down()
        metrics.STORE_UP.set(1 if up else 0)

    async def _write_back(self, back: WriteBack) -> None:
        """Record what was admitted alone in the shared windows; retried (the same id is
        recorded once) until it lands, or until the store is down again (then the next
        return hands it out again)."""
        while not self.degraded:
            try:
                await self.shared.record(
                    back.scope, back.windows, back.amounts, reservation_id=back.reservation_id
                )
            except StoreUnavailable:
                await asyncio.sleep(STORE_RETRY_PAUSE_S)
                continue
            self.local.written_back(back)
            return

    async def close(self) -> None:
        return None

    async def acquire(
        self, scope: str, windows: Sequence[Window], amounts: Sequence[int], share: float, rid: str
    ) -> tuple[Admission, str] | None:
        """The admission and where it is recorded ("shared", "local" or "both"); None when the
        store is overloaded (try again shortly)."""
        give_up = time.monotonic() + self._decide_s
        tried = False  # the store may have recorded an attempt that failed
        while True:
            # Planned again after every failure: the breaker may have opened meanwhile, or
            # found the store restarted without its state (then recovery begins).
            mode = self.local.mode(scope, windows)
            if mode is not Mode.SHARED:
                # A retry with the same id is a replay: it is never recorded twice.
                mine = self.local.acquire(scope, windows, amounts, share, rid)
                if mode is Mode.LOCAL or not mine.admitted:
                    if tried:
                        self._spawn(self._forget(scope, windows, rid))
                    return mine, "local"
            try:
                admission = await self.shared.acquire(
                    scope, windows, amounts, share=share, reservation_id=rid, claim=self._claim
                )
            except StoreUnavailable:
                tried = True
                if self.degraded:
                    continue
                if time.monotonic() < give_up:
                    await asyncio.sleep(STORE_RETRY_PAUSE_S)
                    continue
                self._spawn(self._forget(scope, windows, rid))
                if mode is Mode.BOTH:
                    self.local.adjust(scope, windows, rid, [0] * len(windows))
                return None
            if admission.claimed:
                self.local.claimed(scope, windows, admission.claimed)
            if mode is Mode.BOTH:
                if admission.admitted:
                    return admission, "both"
                self.local.adjust(scope, windows, rid, [0] * len(windows))
            return admission, "shared"

    async def acquire_any(
        self, candidates: Sequence[Candidate], share: float, rid: str
    ) -> tuple[Choice, str] | None:
        """``acquire`` at whichever candidate has room (Store.acquire_any, one script), and
        where it is recorded; None when the store is overloaded. ``rid`` must be new (only
        this method's own retries resend it). ``candidates`` come in preference order: while
        the store is down or recovering, each is asked in turn through ``acquire``, and the
        first with room admits."""
        give_up = time.monotonic() + self._decide_s
        fresh = True  # until a send fails: the store may have recorded it
        while all(self.local.mode(c.scope, c.windows) is Mode.SHARED for c in candidates):
            try:
                choice = await self.shared.acquire_any(
                    candidates, share=share, reservation_id=rid, claim=self._claim, fresh=fresh
                )
            except StoreUnavailable:
                fresh = False
                if self.degraded:
                    break  # the fallback below asks each candidate's local share
                if time.monotonic() < give_up:
                    await asyncio.sleep(STORE_RETRY_PAUSE_S)
                    continue
                for c in candidates:
                    self._spawn(self._forget(c.scope, c.windows, rid))
                return None
            for c, admission in zip(candidates, choice.admissions, strict=True):
                if admission.claimed:
                    self.local.claimed(c.scope, c.windows, admission.claimed)
            return choice, "shared"
        # Store down or recovering: each candidate in turn, in the order given (the caller's
        # preference), each through its own mode; the ones not asked report nothing.
        asked: list[Admission] = []
        for c in candidates:
            got = await self.acquire(c.scope, c.windows, c.amounts, share, rid)
            if got is None:
                return None
            admission, where = got
            asked.append(admission)
            if admission.admitted:
                unasked = [NOT_LOOKED] * (len(candidates) - len(asked))
                return Choice(len(asked) - 1, (*asked, *unasked), 0.0), where
        return Choice(None, tuple(asked), min(a.retry_after for a in asked)), "local"

    async def adjust(
        self,
        scope: str,
        windows: Sequence[Window],
        rid: str,
        amounts: Sequence[int],
        where: str,
        announce: Announcement | None = None,
    ) -> bool:
        """Set a reservation's amounts; retried like acquire (setting amounts is idempotent).
        False when the store never answered: the reservation then keeps its old amounts.
        ``announce`` goes with the shared store's adjustment (see Store.adjust)."""
        if where in ("local", "both"):
            self.local.adjust(scope, windows, rid, amounts)
            if where == "local":
                return True
        give_up = time.monotonic() + self._decide_s
        while True:
            try:
                await self.shared.adjust(scope, windows, rid, amounts, announce=announce)
                return True
            except StoreUnavailable as exc:
                if self.degraded or time.monotonic() >= give_up:
                    log.debug("quota: could not adjust a reservation in %s: %s", scope, exc)
                    return False
                await asyncio.sleep(STORE_RETRY_PAUSE_S)

    async def usage(self, scope: str, windows: Sequence[Window]) -> list[WindowUsage]:
        # Reading stats never changes how admissions are made: only acquire decides that.
        if self.local.mode(scope, windows) is Mode.SHARED:
            with contextlib.suppress(StoreUnavailable):
                return await self.shared.usage(scope, windows)
        return self.local.usage(scope, windows)

    async def _forget(self, scope: str, windows: Sequence[Window], rid: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.shared.adjust(scope, windows, rid, [0] * len(windows))
