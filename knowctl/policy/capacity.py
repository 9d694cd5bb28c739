"""Learned capacity: a requests-per-window limit for a deployment that declares none (Vertex's
Dynamic Shared Quota has no number, only 429s when the shared pool is busy), learned by
additive increase and multiplicative decrease, as TCP's congestion window and Netflix's
concurrency-limits are.

- It starts at ``start`` and doubles once per window while the window fills (slow start),
  until the provider first refuses.
- A provider 429 sets it to ``DECREASE`` times what the window had admitted when it came (or
  times the limit, if that is lower): the provider served that many, so a little less fits.
- After that, a window that fills to ``FULL`` of the limit without a refusal raises it by
  ``INCREASE`` of itself (at least one request): it probes for more, slowly.

So it settles just under what the provider serves and follows it when that changes. Pure
code: the daemon applies it to the lane's window and shares it between daemons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DECREASE = 0.9
INCREASE = 0.1
FULL = 0.9  # a window this full of the limit is the provider's capacity being used


@dataclass(slots=True)
class LearnedLimit:
    limit: float
    probing: bool = True  # slow start: no refusal seen yet
    raised_at: float = -math.inf  # when it last rose (it rises at most once a window)
    refusals: int = 0  # provider 429s it learned from

    @property
    def units(self) -> int:
        """The limit as the window's whole number of requests (at least one)."""
        return max(1, math.floor(self.limit))

    def admitted(self, used: int, now: float, window_s: float) -> bool:
        """An admission left ``used`` requests in the window: raise the limit if the window
        is full and it has not risen within the last window. Whether it changed."""
        if used < FULL * self.units or now - self.raised_at < window_s:
            return False
        self.limit = self.limit * 2 if self.probing else self.limit + max(1.0, INCREASE * self.limit)
        self.raised_at = now
        return True

    def refused(self, used: int, now: float) -> bool:
        """The provider refused with ``used`` requests in the window: lower the limit. Whether
        it changed (a refusal below the new limit, from calls already in flight, does not
        lower it twice)."""
        self.refusals += 1
        self.probing = False
        self.raised_at = now  # no raise within the window that was just refused
        if used > self.units:
            return False  # admitted under a higher limit, before it was lowered: learnt already
        lowered = max(1.0, DECREASE * min(self.limit, float(max(used, 1))))
        if lowered >= self.limit:
            return False
        self.limit = lowered
        return True
