"""Sliding-window arithmetic: the rules both state backends follow, with the clock passed in.

A window counts the amounts recorded in it and admits a request only if every window it
touches stays within its capacity. Two kinds of window:

* rolling (``calendar_tz`` is None): an entry recorded at ``t`` counts while
  ``now - length_s < t <= now``, and so leaves at exactly ``t + length_s``;
* calendar day (``calendar_tz`` names a zone): an entry counts from its local day's
  midnight until the next one (the Gemini API resets daily quota at midnight Pacific).
  Days are 23 or 25 hours long across DST changes; midnight is computed, never assumed.

:class:`WindowLog` is an exact log (one entry per reservation), so the arithmetic can be
proven against a brute-force recount. The memory backend runs it directly; the Redis
backend's Lua scripts (``knowctl/store/lua``) are a line-by-line transliteration.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Window:
    """One limit: at most ``limit`` units in any window of ``length_s`` seconds (or per local day)."""

    name: str
    length_s: float
    limit: int
    calendar_tz: str | None = None

    def __post_init__(self) -> None:
        # Names become part of store keys, so keep them to a safe alphabet.
        if not _NAME.match(self.name):
            raise ValueError(f"window name {self.name!r} must match {_NAME.pattern}")
        if not (math.isfinite(self.length_s) and self.length_s > 0):
            raise ValueError(f"window {self.name}: length_s must be a positive number")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0:
            raise ValueError(f"window {self.name}: limit must be an integer >= 0")
        if self.calendar_tz is not None:
            zone(self.calendar_tz)  # fail at configuration time, not on the first request


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def capacity(limit: int, share: float) -> int:
    """Units a request of priority share ``share`` may fill: floor(limit * share).

    The epsilon keeps e.g. 100 * 0.29 (= 28.999999999999996 in binary) at 29.
    """
    if not (math.isfinite(share) and 0 < share <= 1):
        raise ValueError("share must be in (0, 1]")
    return max(0, min(limit, math.floor(limit * share + 1e-9)))


def local_midnight(tz: str, day: date) -> float:
    """Epoch seconds of the first instant of ``day`` in ``tz``.

    fold=0 picks the earlier instant when midnight is repeated, and when midnight falls in a
    DST gap (zones that spring forward at 00:00) it maps to the transition instant itself,
    which is the day's first existing instant.
    """
    return datetime.combine(day, dtime(0), tzinfo=zone(tz)).timestamp()


def calendar_period(tz: str, now: float) -> tuple[float, float]:
    """(start, end) of the local day holding ``now``: start <= now < end."""
    day = datetime.fromtimestamp(now, zone(tz)).date()
    start = local_midnight(tz, day)
    while start > now:  # defensive: odd transitions must not yield a period in the future
        day -= timedelta(days=1)
        start = local_midnight(tz, day)
    end = local_midnight(tz, day + timedelta(days=1))
    while end <= now:
        day += timedelta(days=1)
        start, end = end, local_midnight(tz, day + timedelta(days=1))
    return start, end


def day_boundaries(tz: str, around: float, before: int = 2, after: int = 3) -> tuple[float, ...]:
    """Midnights from ``before`` days before ``around``'s local day to ``after`` days after it.

    The Redis scripts cannot do time-zone arithmetic, so the client sends these and the
    script picks the period around the *server's* clock: the client's clock only has to be
    right to within a day.
    """
    day = datetime.fromtimestamp(around, zone(tz)).date()
    return tuple(local_midnight(tz, day + timedelta(days=k)) for k in range(-before, after + 1))


class WindowLog:
    """The recorded reservations of one window, oldest first, with a running total."""

    __slots__ = ("_amounts", "_entries", "total")

    def __init__(self) -> None:
        self._entries: deque[tuple[float, str]] = deque()
        self._amounts: dict[str, int] = {}
        self.total = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, reservation_id: object) -> bool:
        return reservation_id in self._amounts

    def trim(self, window: Window, now: float) -> int:
        """Forget entries that no longer count at ``now``; return the usage that remains."""
        entries = self._entries
        if window.calendar_tz is None:
            # Compare leave times (ts + length), the same float sums that wait_for reports,
            # so that "now + retry_after" is never refused by a rounding error.
            length = window.length_s
            while entries and entries[0][0] + length <= now:
                self._drop()
        else:
            start, _ = calendar_period(window.calendar_tz, now)
            while entries and entries[0][0] < start:
                self._drop()
        return self.total

    def _drop(self) -> None:
        _, rid = self._entries.popleft()
        self.total -= self._amounts.pop(rid)

    def record(self, reservation_id: str, amount: int, now: float) -> None:
        # A clock that steps backwards would break the oldest-first order; recording at the
        # newest time instead only keeps the entry longer, which can never over-admit.
        if self._entries and self._entries[-1][0] > now:
            now = self._entries[-1][0]
        self._entries.append((now, reservation_id))
        self._amounts[reservation_id] = amount
        self.total += amount

    def amount(self, reservation_id: str) -> int | None:
        """The amount recorded for ``reservation_id``; None once it has left (or never came)."""
        return self._amounts.get(reservation_id)

    def adjust(self, reservation_id: str, amount: int) -> bool:
        """Set a recorded reservation's amount, keeping its time; False if it is not here."""
        old = self._amounts.get(reservation_id)
        if old is None:
            return False
        self._amounts[reservation_id] = amount
        self.total += amount - old
        return True

    def reset_after(self, window: Window, now: float) -> float:
        """Seconds until usage next drops: the oldest entry leaves (rolling) or midnight (calendar)."""
        if window.calendar_tz is not None:
            return calendar_period(window.calendar_tz, now)[1] - now
        if not self._entries:
            return 0.0
        return _until(self._entries[0][0] + window.length_s, now)

    def wait_for(self, window: Window, need: int, now: float) -> float:
        """Seconds until at least ``need`` units have left the window (call after trim)."""
        if window.calendar_tz is not None:
            return calendar_period(window.calendar_tz, now)[1] - now
        freed = 0
        for ts, rid in self._entries:
            freed += self._amounts[rid]
            if freed >= need:
                return _until(ts + window.length_s, now)
        # Only reachable if need > total, which acquire never asks for.
        return window.length_s


def _until(moment: float, now: float) -> float:
    """``moment - now``, rounded up so that ``now + result >= moment`` holds in floats too."""
    wait = moment - now
    while now + wait < moment:
        wait = math.nextafter(wait, math.inf)
    return wait


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`try_admit` decided; the stores wrap it into their ``Admission``."""

    admitted: bool
    retry_after: float
    usage: tuple[int, ...]
    reset_after: tuple[float, ...]
    blocked: tuple[str, ...]


def try_admit(
    logs: Sequence[WindowLog],
    windows: Sequence[Window],
    amounts: Sequence[int],
    caps: Sequence[int],
    reservation_id: str,
    now: float,
    held: Sequence[int] | None = None,
    *,
    record: bool = True,
) -> Verdict:
    """Admit iff every window with a positive amount stays within its cap, and within its
    limit with the units ``held`` by others' claims counted too (see ``claim_size``);
    record only then (and only with ``record``: without, the usage is left as it was).

    A reservation id already present in any window is a replay (e.g. a retried call whose
    first attempt did land): it is reported admitted and nothing is recorded twice.
    """
    used = [log.trim(w, now) for log, w in zip(logs, windows, strict=True)]
    if any(reservation_id in log for log in logs):
        return Verdict(True, 0.0, tuple(used), _resets(logs, windows, now), ())
    others = held if held is not None else (0,) * len(caps)
    blocked = [
        i
        for i, (u, a, c, h, w) in enumerate(zip(used, amounts, caps, others, windows, strict=True))
        if a > 0 and (u + a > c or u + a + h > w.limit)
    ]
    if not blocked:
        if not record:
            return Verdict(True, 0.0, tuple(used), _resets(logs, windows, now), ())
        for log, amount in zip(logs, amounts, strict=True):
            log.record(reservation_id, amount, now)
        usage = tuple(u + a for u, a in zip(used, amounts, strict=True))
        return Verdict(True, 0.0, usage, _resets(logs, windows, now), ())
    retry = 0.0
    for i in blocked:
        if amounts[i] > caps[i]:
            retry = math.inf  # can never fit, however long the caller waits
            break
        need = max(used[i] + amounts[i] - caps[i], used[i] + amounts[i] + others[i] - windows[i].limit)
        retry = max(retry, logs[i].wait_for(windows[i], need, now))
    names = tuple(windows[i].name for i in blocked)
    return Verdict(False, retry, tuple(used), _resets(logs, windows, now), names)


def headroom(used: Sequence[int], limits: Sequence[int]) -> float:
    """The smallest share any window has left (1.0 without windows): how a pool orders the
    deployments of one preference, most left first."""
    return min(((limit - u) / limit for u, limit in zip(used, limits, strict=True) if limit > 0), default=1.0)


def claim_size(limit: int, used: int, others: int, parts: int) -> int:
    """The units a daemon may hold for a store outage: an equal part of what the window has
    left beside the others' claims, so usage plus every claim stays within the limit."""
    free = limit - used - others
    return free // max(1, parts) if free > 0 else 0


def _resets(logs: Sequence[WindowLog], windows: Sequence[Window], now: float) -> tuple[float, ...]:
    return tuple(log.reset_after(w, now) for log, w in zip(logs, windows, strict=True))
