"""Local windows for a store outage: what each daemon may admit alone, never more than the
fleet's limit, and a stall that costs about its own length.

While the shared store answers, every admission of the provider quota also keeps this
daemon's *claim* in it (knowctl/store/lua/acquire.lua): an equal part of what the window
has left beside the other daemons' claims, which their admissions must leave free. Usage
plus every claim never exceeds the limit, so when the store stops answering each daemon
may admit up to its last claim on its own and the fleet stays within the limit.

So when the store goes down, each local window holds ``floor(limit / max_replicas)`` (this
daemon's share of a whole window) and starts with one phantom entry of that share less
the claim, recorded at the outage: until it leaves (one window length later, when
everything admitted before the outage has left the shared window too) the daemon admits
its claim; after that its share of each window. A daemon with no fresh claim (idle for a
while, or a scope it never saw) starts full, as if it had claimed nothing. Windows that
start empty (``start_full=False``: per-user limits, which keep callers fair but are no
contract with the provider) get the share at once.

When the store answers again, what was admitted locally is written back into the shared
windows (``store_up`` says what; one record per scope), so the shared count is right at
once, and for a short grace (until every daemon has noticed the return and written back)
each scope is RECOVERING: admitted only if both the local windows and the shared one admit
it, recorded in both. Then the shared store alone decides again. Only a store that came
back without its history (an empty, restarted Redis) keeps scopes recovering until the
phantom has left, since the shared windows then lack what was admitted before the outage.

Pure state with the clock passed in; the callers (windows/store.py) do the store I/O.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from knowctl.policy.windows import Window, WindowLog, calendar_period, capacity, try_admit
from knowctl.store import Admission, WindowUsage

# The phantom entry that stands for what the shared window held beyond our claim.
PHANTOM = "~outage"
_SWEEP_MIN = 1024


class Mode(enum.Enum):
    SHARED = "shared"  # the store alone decides
    LOCAL = "local"  # the store is down: the local share alone decides
    BOTH = "both"  # recovering: both must admit, both record


@dataclass(frozen=True, slots=True)
class WriteBack:
    """Admissions made while the store was away, to record in its windows."""

    scope: str
    windows: tuple[Window, ...]
    amounts: tuple[int, ...]
    reservation_id: str


def local_limit(limit: int, replicas: int) -> int:
    """This daemon's share of ``limit`` when ``replicas`` daemons may share it."""
    return limit // max(1, replicas)


def drained_at(window: Window, moment: float) -> float:
    """When an entry recorded at ``moment`` has left ``window``."""
    if window.calendar_tz is None:
        return moment + window.length_s
    return calendar_period(window.calendar_tz, moment)[1]


class LocalShare:
    """This daemon's share windows, its claims, and which mode each scope is in."""

    def __init__(
        self,
        replicas: int,
        grace_s: float,
        *,
        start_full: bool = True,
        claim_trust_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.replicas = max(1, replicas)
        self._start_full = start_full
        self._grace = grace_s
        # How long after it was granted a claim is believed at an outage (the store keeps
        # it longer, so others never use units this daemon still counts on).
        self._trust = claim_trust_s
        self._clock = clock
        self.down = False
        self._outage_at: float | None = None  # start of the latest outage
        self._returned_at: float | None = None  # when the store answered again after it
        self._lost_at: float | None = None  # when the store was found without its history
        self._lost_horizon = 0.0  # after this, no window remembers the loss
        self._lost_until: dict[str, float] = {}  # scope -> end of its recovery from the loss
        self._recovery_ends = 0.0  # the latest end of recovery known so far
        self._epoch = 0  # bumped per outage: logs of an older epoch get a new phantom
        self._logs: dict[str, tuple[int, tuple[Window, ...], list[WindowLog]]] = {}
        self._claims: dict[str, tuple[tuple[Window, ...], tuple[int, ...], float]] = {}
        # Scopes admitting from a claim during this outage: until when the claim may be spent.
        self._claim_until: dict[str, float] = {}
        # Admissions made while down and in no write-back yet: scope -> reservation ids.
        self._unsynced: dict[str, set[str]] = {}
        # Write-backs handed out and not yet confirmed, by their reservation id.
        self._backs: dict[str, WriteBack] = {}
        self._sweep_at = _SWEEP_MIN

    # --- what the shared store said ----------------------------------------------------------
    def claimed(self, scope: str, windows: Sequence[Window], units: tuple[int, ...]) -> None:
        """The claim a shared admission just granted (knowctl.store.Claim)."""
        self._claims[scope] = (tuple(windows), units, self._clock())

    # --- store health, told by the breaker --------------------------------------------------
    def store_down(self) -> None:
        if self.down:
            return
        self._claim_until.clear()
        self.down = True
        self._epoch += 1
        self._outage_at = self._clock()
        self._returned_at = None

    def store_up(self) -> list[WriteBack]:
        """The store answers again: what to write back into it, each to confirm with
        ``written_back`` (until then its scope stays recovering; one that could not be
        written is handed out again, with the same id, at the next return)."""
        if not self.down:
            return []
        self.down = False
        now = self._returned_at = self._clock()
        self._recovery_ends = max(self._recovery_ends, now + self._grace)
        for scope, rids in self._unsynced.items():
            back = self._write_back(scope, rids, now)
            if back is not None:
                self._backs[back.reservation_id] = back
        self._unsynced.clear()
        return list(self._backs.values())

    def written_back(self, back: WriteBack) -> None:
        self._backs.pop(back.reservation_id, None)

    def state_lost(self) -> None:
        """The store came back without its history: every scope recovers until what it
        admitted before the loss would have left its windows."""
        now = self._lost_at = self._clock()
        self._lost_until.clear()
        self._lost_horizon = now + self._grace + 2 * 86400.0  # past any day window's end
        ends = [drained_at(w, now + self._grace) for _, windows, _ in self._logs.values() for w in windows]
        self._recovery_ends = max([self._recovery_ends, now + self._grace, *ends])

    # --- decisions ---------------------------------------------------------------------------
    def mode(self, scope: str, windows: Sequence[Window]) -> Mode:
        if self.down:
            return Mode.LOCAL
        if self._returned_at is None and self._lost_at is None:
            return Mode.SHARED
        now = self._clock()
        maybe = (
            now < self._recovery_ends or now < self._lost_horizon or scope in self._unsynced or self._backs
        )
        if maybe and self._recovering(scope, windows, now):
            return Mode.BOTH
        self._logs.pop(scope, None)  # recovered: the local log has nothing left to say
        return Mode.SHARED

    def _recovering(self, scope: str, windows: Sequence[Window], now: float) -> bool:
        if self._returned_at is not None and now < self._returned_at + self._grace:
            return True  # other daemons may not have noticed the return and written back
        if scope in self._unsynced or any(b.scope == scope for b in self._backs.values()):
            return True
        lost = self._lost_at
        if lost is None:
            return False
        until = self._lost_until.get(scope)
        if until is None:  # once per scope: a calendar window's end costs a zone lookup
            until = self._lost_until[scope] = max(drained_at(w, lost + self._grace) for w in windows)
        return now < until

    @property
    def recovering(self) -> bool:
        """The store is back but some local windows may still bound admissions."""
        return not self.down and (bool(self._unsynced or self._backs) or self._clock() < self._recovery_ends)

    def acquire(
        self, scope: str, windows: Sequence[Window], amounts: Sequence[int], share: float, rid: str
    ) -> Admission:
        now = self._clock()
        logs = self._window_logs(scope, windows, now)
        until = self._claim_until.get(scope)
        if until is not None and now >= until:
            # The store forgets the claim about now and may give its units to daemons that
            # still reach it: what is left of it is no longer ours (the phantom grows back).
            del self._claim_until[scope]
            phantom = f"{PHANTOM}{self._epoch}"
            for w, log in zip(windows, logs, strict=True):
                log.adjust(phantom, local_limit(w.limit, self.replicas))
        caps = [capacity(local_limit(w.limit, self.replicas), share) for w in windows]
        verdict = try_admit(logs, windows, amounts, caps, rid, now)
        if verdict.admitted and self.down:
            self._unsynced.setdefault(scope, set()).add(rid)
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
    def _write_back(self, scope: str, rids: set[str], now: float) -> WriteBack | None:
        found = self._logs.get(scope)
        if found is None:
            return None
        _, windows, logs = found
        amounts = []
        for w, log in zip(windows, logs, strict=True):
            log.trim(w, now)  # what has left the window needs no writing back
            amounts.append(sum(log.amount(rid) or 0 for rid in rids))
        if not any(amounts):
            return None
        return WriteBack(scope, windows, tuple(amounts), f"~back-{uuid.uuid4().hex}")

    def _phantom(self, scope: str, window: Window, index: int, windows: tuple[Window, ...]) -> int:
        """What the shared window held beyond this daemon's claim at the outage, in units of
        this daemon's share."""
        share = local_limit(window.limit, self.replicas)
        claim = self._claims.get(scope)
        if claim is None or self._outage_at is None or claim[0] != windows:
            return share
        if self._outage_at - claim[2] > self._trust:
            return share  # too old to rely on: the store may have let others use it
        return max(0, share - claim[1][index])

    def _window_logs(self, scope: str, windows: Sequence[Window], now: float) -> list[WindowLog]:
        windows = tuple(windows)
        found = self._logs.get(scope)
        same = found is not None and found[1] == windows
        if found is not None and same and found[0] == self._epoch:
            return found[2]
        self._sweep(now)
        logs = found[2] if found is not None and same else [WindowLog() for _ in windows]
        if self._outage_at is not None and self._start_full:
            self._claim_until.pop(scope, None)
            for i, (w, log) in enumerate(zip(windows, logs, strict=True)):
                log.record(f"{PHANTOM}{self._epoch}", self._phantom(scope, w, i, windows), self._outage_at)
            claim = self._claims.get(scope)
            if self.down and claim is not None and self._outage_at - claim[2] <= self._trust:
                self._claim_until[scope] = claim[2] + self._trust
        self._logs[scope] = (self._epoch, windows, logs)
        return logs

    def _sweep(self, now: float) -> None:
        # Scopes nobody asks about again would stay forever; an occasional pass (when the
        # dict has doubled) drops those whose entries all left, at O(1) amortised per scope.
        if len(self._logs) < self._sweep_at:
            return
        for scope, (_, windows, logs) in list(self._logs.items()):
            if scope in self._unsynced or any(b.scope == scope for b in self._backs.values()):
                continue
            # Empty once trimmed: a later access rebuilds it, phantom and all, to the same effect.
            if not any(log.trim(w, now) or len(log) for w, log in zip(windows, logs, strict=True)):
                del self._logs[scope]
        self._sweep_at = max(_SWEEP_MIN, 2 * len(self._logs))
