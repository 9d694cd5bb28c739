"""Local windows for a store outage: each daemon's share of every limit, never more.

While the shared store is down, every daemon admits from windows in its own memory holding
``floor(limit / max_replicas)``: with at most ``max_replicas`` daemons the fleet together
stays within the limit. What the shared window held at the moment of the outage is unknown,
so each local window starts as if it had been full then: it holds one entry of its whole
share, recorded at the outage, which leaves it one window length later. So nothing is
admitted until the traffic admitted before the outage has left its window, and the fleet
never over-admits in any window.

When the store answers again its windows lack what was admitted locally, and it may have
lost its history (an empty, restarted Redis). So for one more window length (plus a grace
for daemons that notice the return a little later) each scope is RECOVERING: a request is
admitted only if both its local share and the shared window admit it, and it is recorded in
both. By the end, every entry admitted locally has left its window and the shared window
holds everything admitted since: from then on it alone decides.

The cost is honest: an outage stops admissions for one window length (for a day window, a
day) and then allows each daemon its share. Pure state with the clock passed in; the
callers (quota_store.py, callers.py) do the store I/O.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence

from knowctl.policy.windows import Window, WindowLog, calendar_period, capacity, try_admit
from knowctl.store import Admission, WindowUsage

# The phantom entry that stands for the shared window's unknown content at the outage.
PHANTOM = "~outage"
_SWEEP_MIN = 1024


class Mode(enum.Enum):
    SHARED = "shared"  # the store alone decides
    LOCAL = "local"  # the store is down: the local share alone decides
    BOTH = "both"  # recovering: both must admit, both record


def local_limit(limit: int, replicas: int) -> int:
    """This daemon's share of ``limit`` when ``replicas`` daemons may share it."""
    return limit // max(1, replicas)


def drained_at(window: Window, moment: float) -> float:
    """When an entry recorded at ``moment`` has left ``window``."""
    if window.calendar_tz is None:
        return moment + window.length_s
    return calendar_period(window.calendar_tz, moment)[1]


class LocalShare:
    """This daemon's share windows, and which mode each scope is in."""

    def __init__(
        self,
        replicas: int,
        grace_s: float,
        *,
        start_full: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.replicas = max(1, replicas)
        # False: local windows start empty (see QuotaStore's caller in callers.py for why).
        self._start_full = start_full
        self._grace = grace_s
        self._clock = clock
        self.down = False
        self._outage_at: float | None = None  # start of the latest outage
        self._returned_at: float | None = None  # when the store answered again after it
        self._recovery_ends = 0.0  # the latest end of recovery known so far
        self._epoch = 0  # bumped per outage: logs of an older epoch get a new phantom
        self._logs: dict[str, tuple[int, tuple[Window, ...], list[WindowLog]]] = {}
        self._sweep_at = _SWEEP_MIN

    # --- store health, told by the breaker --------------------------------------------------
    def store_down(self) -> None:
        if self.down:
            return
        self.down = True
        self._epoch += 1
        self._outage_at = self._clock()
        self._returned_at = None

    def store_up(self) -> None:
        if not self.down:
            return
        self.down = False
        now = self._returned_at = self._clock()
        ends = [drained_at(w, now + self._grace) for _, windows, _ in self._logs.values() for w in windows]
        self._recovery_ends = max([now + self._grace, *ends])

    # --- decisions ---------------------------------------------------------------------------
    def mode(self, scope: str, windows: Sequence[Window]) -> Mode:
        if self.down:
            return Mode.LOCAL
        if self._returned_at is None:
            return Mode.SHARED
        until = max(drained_at(w, self._returned_at + self._grace) for w in windows)
        if self._clock() < until:
            self._recovery_ends = max(self._recovery_ends, until)
            return Mode.BOTH
        self._logs.pop(scope, None)  # recovered: the local log has nothing left to say
        return Mode.SHARED

    @property
    def recovering(self) -> bool:
        """The store is back but some local windows may still bound admissions."""
        return not self.down and self._clock() < self._recovery_ends

    def acquire(
        self, scope: str, windows: Sequence[Window], amounts: Sequence[int], share: float, rid: str
    ) -> Admission:
        now = self._clock()
        logs = self._window_logs(scope, windows, now)
        caps = [capacity(local_limit(w.limit, self.replicas), share) for w in windows]
        verdict = try_admit(logs, windows, amounts, caps, rid, now)
        return Admission(
            admitted=verdict.admitted,
            retry_after=verdict.retry_after,
            usage=verdict.usage,
            limits=tuple(local_limit(w.limit, self.replicas) for w in windows),
            reset_after=verdict.reset_after,
            blocked=verdict.blocked,
        )

    def adjust(self, scope: str, windows: Sequence[Window], rid: str, amounts: Sequence[int]) -> None:
        found = self._logs.get(scope)
        if found is None:
            return  # recovered and forgotten: nothing of it still counts
        now = self._clock()
        for w, log, amount in zip(windows, found[2], amounts, strict=True):
            log.trim(w, now)
            log.adjust(rid, amount)

    def usage(self, scope: str, windows: Sequence[Window]) -> list[WindowUsage]:
        now = self._clock()
        logs = self._window_logs(scope, windows, now)
        return [
            WindowUsage(
                w.name,
                log.trim(w, now),
                local_limit(w.limit, self.replicas),
                len(log),
                log.reset_after(w, now),
            )
            for w, log in zip(windows, logs, strict=True)
        ]

    # --- inside --------------------------------------------------------------------------------
    def _window_logs(self, scope: str, windows: Sequence[Window], now: float) -> list[WindowLog]:
        windows = tuple(windows)
        found = self._logs.get(scope)
        same = found is not None and found[1] == windows
        if found is not None and same and found[0] == self._epoch:
            return found[2]
        self._sweep(now)
        logs = found[2] if found is not None and same else [WindowLog() for _ in windows]
        if self._outage_at is not None and self._start_full:
            # As if the shared window had been full at the outage: a whole share, recorded then.
            for w, log in zip(windows, logs, strict=True):
                log.record(f"{PHANTOM}{self._epoch}", local_limit(w.limit, self.replicas), self._outage_at)
        self._logs[scope] = (self._epoch, windows, logs)
        return logs

    def _sweep(self, now: float) -> None:
        # Scopes nobody asks about again would stay forever; an occasional pass (when the
        # dict has doubled) drops those whose entries all left, at O(1) amortised per scope.
        if len(self._logs) < self._sweep_at:
            return
        for scope, (_, windows, logs) in list(self._logs.items()):
            # Empty once trimmed: a later access rebuilds it, phantom and all, to the same effect.
            if not any(log.trim(w, now) or len(log) for w, log in zip(windows, logs, strict=True)):
                del self._logs[scope]
        self._sweep_at = max(_SWEEP_MIN, 2 * len(self._logs))
