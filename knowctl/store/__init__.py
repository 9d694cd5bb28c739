"""State backends, chosen by URL: ``memory://``, ``redis://``, ``rediss://``,
``redis+cluster://`` and ``redis+sentinel://`` (see knowctl.store.urls).

``import knowctl.store`` stays cheap: the Redis backend (and redis-py) is imported only
when a Redis URL is opened.
"""

from __future__ import annotations

from knowctl.store.base import (
    NOT_LOOKED,
    Admission,
    Announcement,
    Candidate,
    Choice,
    Claim,
    Health,
    Keys,
    Leases,
    Notifications,
    Records,
    Store,
    StoreUnavailable,
    Subscription,
    Tallies,
    Window,
    Windows,
    WindowUsage,
)
from knowctl.store.urls import SCHEMES, scheme_of

__all__ = [
    "NOT_LOOKED",
    "Admission",
    "Announcement",
    "Candidate",
    "Choice",
    "Claim",
    "Health",
    "Keys",
    "Leases",
    "Notifications",
    "Records",
    "Store",
    "StoreUnavailable",
    "Subscription",
    "Tallies",
    "Window",
    "WindowUsage",
    "Windows",
    "open_store",
]


def open_store(url: str, *, timeout: float) -> Store:
    """The backend for ``url`` (see knowctl.store.urls). Opening does no I/O; the first call
    connects. Shared stores come behind a circuit breaker (knowctl.store.breaker)."""
    scheme = scheme_of(url)
    if scheme == "memory":
        from knowctl.store.memory import MemoryStore

        return MemoryStore(url)
    if scheme not in SCHEMES:
        choices = ", ".join(SCHEMES)
        raise ValueError(f"unsupported store URL scheme {scheme or '(none)'!r}: use one of {choices}")
    # Imported here: redis-py costs import time that memory:// users never pay.
    from knowctl.store.breaker import BreakerStore
    from knowctl.store.redis.opening import open_redis_store

    # A shared store can go away: behind a breaker an outage fails calls at once instead of
    # making each one wait for its timeout (knowctl/store/breaker.py).
    return BreakerStore(open_redis_store(url, timeout=timeout), timeout=timeout)
