"""How many calls may be retried at another deployment at once: a budget that is a share of
the calls in flight, as Envoy's retry budgets are, so that an outage of one deployment cannot
turn every call into two and the survivors into a retry storm.

Pure bookkeeping, no clock: the pipeline counts calls in flight and retries in flight.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Envoy's defaults (retry_budget: budget_percent 20, min_retry_concurrency 3).
DEFAULT_SHARE = 0.2
DEFAULT_MINIMUM = 3
# Attempts at other deployments one call may make after its first.
DEFAULT_ATTEMPTS = 2


@dataclass(slots=True)
class RetryBudget:
    share: float = DEFAULT_SHARE
    minimum: int = DEFAULT_MINIMUM
    attempts: int = DEFAULT_ATTEMPTS
    in_flight: int = 0  # calls on their way upstream
    retries: int = 0  # of them, retries at another deployment

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1

    def retrying(self, delta: int) -> None:
        self.retries += delta

    @contextmanager
    def attempting(self, attempt: int) -> Iterator[None]:
        """The block is attempt number ``attempt`` (0: the first); a retry counts as one in
        flight while it runs."""
        if attempt:
            self.retries += 1
        try:
            yield
        finally:
            if attempt:
                self.retries -= 1

    def may_retry(self, attempt: int) -> bool:
        """Whether the call about to make attempt number ``attempt`` (0: its first) may try
        another deployment should this attempt fail: within its attempts, and with room in
        the budget, ``max(minimum, share x calls in flight)`` retries at once."""
        if attempt >= self.attempts:
            return False
        return self.retries < max(self.minimum, int(self.share * self.in_flight))
