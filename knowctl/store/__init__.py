"""State backends, chosen by URL: ``memory://``, ``redis://``, ``rediss://``.

``import knowctl.store`` stays cheap: the Redis backend (and redis-py) is imported only
when a Redis URL is opened.
"""

from __future__ import annotations

from knowctl.store.base import Admission, Store, StoreUnavailable, Subscription, Window, WindowUsage

__all__ = [
    "Admission",
    "Store",
    "StoreUnavailable",
    "Subscription",
    "Window",
    "WindowUsage",
    "open_store",
]

SCHEMES = ("memory", "redis", "rediss")


def open_store(url: str, *, timeout: float) -> Store:
    """The backend for ``url``. Opening does no I/O; the first call connects."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from knowctl.store.memory import MemoryStore

        return MemoryStore(url)
    if scheme in ("redis", "rediss"):
        from knowctl.store.redis import RedisStore

        return RedisStore(url, timeout=timeout)
    raise ValueError(f"unsupported store URL scheme {scheme or '(none)'!r}: use one of {', '.join(SCHEMES)}")
