"""The quota windows' store access: the shared store, and local windows while it is down.

A store call that fails is retried with the same reservation id (the store treats a repeat
as a replay, so nothing is counted twice) for up to ``DEGRADE_AFTER_S``. The store is taken
for down only when no call at all has succeeded for that long. A timeout while other calls
succeed is overload (a full connection pool, a busy event loop), not an outage: the request
is then not admitted (the caller queues it), since admitting from local windows would
over-admit, and the script may well have run anyway.

While degraded, each daemon admits from an in-process memory store holding the full limits
(no setting says how many daemons share them yet), so N daemons could together admit up to
N times a limit until the store answers again; it is asked again every ``DEGRADED_RETRY_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from knowctl.daemon import metrics
from knowctl.policy.windows import Window
from knowctl.store import Admission, Store, StoreUnavailable, WindowUsage
from knowctl.store.memory import MemoryStore

log = logging.getLogger("knowctl.quota")

DEGRADE_AFTER_S = 1.0
STORE_RETRY_PAUSE_S = 0.05
# While degraded, admit locally this long before asking the store again, so an outage costs
# one store timeout per second, not one per request.
DEGRADED_RETRY_S = 1.0


class QuotaStore:
    def __init__(self, store: Store, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.shared = store
        self._local = MemoryStore("memory://")
        self._spawn = spawn  # runs background work (kept referenced by the caller)
        self._retry_at = 0.0  # monotonic; > now while degraded
        self._last_ok = -DEGRADE_AFTER_S  # monotonic time of the last store call that answered
        self.degraded = False

    async def close(self) -> None:
        await self._local.close()

    async def acquire(
        self, scope: str, windows: Sequence[Window], amounts: Sequence[int], share: float, rid: str
    ) -> tuple[Admission, bool] | None:
        """The admission and whether it came from the local windows; None when the store is
        overloaded (try again shortly)."""
        if time.monotonic() >= self._retry_at:
            give_up = time.monotonic() + (0 if self.degraded else DEGRADE_AFTER_S)
            while True:
                try:
                    admission = await self.shared.acquire(
                        scope, windows, amounts, share=share, reservation_id=rid
                    )
                except StoreUnavailable as exc:
                    now = time.monotonic()
                    if now < give_up:
                        await asyncio.sleep(STORE_RETRY_PAUSE_S)
                        continue
                    if now - self._last_ok < DEGRADE_AFTER_S:
                        self._spawn(self._forget(scope, windows, rid))  # in case it was recorded
                        return None
                    log.warning("quota: store unavailable, admitting from local windows: %s", exc)
                    self._set_degraded(True)
                    # An attempt that timed out may have been recorded: free it for when the
                    # store is back (best effort; left there it could only under-admit).
                    self._spawn(self._forget(scope, windows, rid))
                    break
                self._answered()
                return admission, False
        local = await self._local.acquire(scope, windows, amounts, share=share, reservation_id=rid)
        return local, True

    async def adjust(
        self, scope: str, windows: Sequence[Window], rid: str, amounts: Sequence[int], local: bool
    ) -> bool:
        """Set a reservation's amounts; retried like acquire (setting amounts is idempotent).
        False when the store never answered: the reservation then keeps its old amounts."""
        if local:
            await self._local.adjust(scope, windows, rid, amounts)
            return True
        give_up = time.monotonic() + DEGRADE_AFTER_S
        while True:
            try:
                await self.shared.adjust(scope, windows, rid, amounts)
                self._answered()
                return True
            except StoreUnavailable as exc:
                if time.monotonic() >= give_up:
                    log.warning("quota: could not adjust a reservation in %s: %s", scope, exc)
                    return False
                await asyncio.sleep(STORE_RETRY_PAUSE_S)

    async def usage(self, scope: str, windows: Sequence[Window]) -> list[WindowUsage]:
        # Reading stats never changes how admissions are made: only acquire decides that.
        if not self.degraded:
            with contextlib.suppress(StoreUnavailable):
                return await self.shared.usage(scope, windows)
        return await self._local.usage(scope, windows)

    async def _forget(self, scope: str, windows: Sequence[Window], rid: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.shared.adjust(scope, windows, rid, [0] * len(windows))

    def _answered(self) -> None:
        self._last_ok = time.monotonic()
        self._set_degraded(False)

    def _set_degraded(self, degraded: bool) -> None:
        if degraded:
            self._retry_at = time.monotonic() + DEGRADED_RETRY_S
        if degraded != self.degraded:
            self.degraded = degraded
            metrics.STORE_UP.set(0 if degraded else 1)
            if not degraded:
                log.info("quota: store answers again, shared windows in use")
