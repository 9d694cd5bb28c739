"""The context caches (``cachedContents``) the simulator remembers: a bounded book, oldest dropped
first, in which an expired cache is gone at the next look.

Pure code with the time passed in. A cache keeps no contents: only their token count (by the
simulator's prompt rule), a digest of their texts (so that an answer that uses the cache
depends on what it holds, as a model's would) and whether they hold the block marker.
Caches live in scopes: the Gemini API's one, or a Vertex project and location
(``projects/{p}/locations/{l}``); a cache is seen only from its own.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from knowctl.simulator.answers import CachedPrefix
from knowctl.simulator.resources import rfc3339

GEMINI_SCOPE = ""  # the Gemini API's caches are named "cachedContents/{id}", with nothing before
DEFAULT_CAPACITY = 10_000
DEFAULT_TTL_S = 3600.0  # Google's default when neither ttl nor expireTime is given
MAX_DISPLAY_NAME = 128

_seq = count(1)


@dataclass(slots=True)
class StoredCache:
    """One context cache: its model, what it holds (as counted) and when it expires."""

    id: str
    scope: str  # GEMINI_SCOPE, or "projects/{p}/locations/{l}"
    model: str  # as Google names it back: "models/{m}" or "projects/…/publishers/google/models/{m}"
    model_id: str  # the bare model id, as a generate path names it
    prefix: CachedPrefix
    created: float
    expires: float
    display_name: str | None = None
    updated: float = 0.0
    seq: int = field(default_factory=lambda: next(_seq))

    @property
    def name(self) -> str:
        return f"{self.scope}/cachedContents/{self.id}" if self.scope else f"cachedContents/{self.id}"

    def resource(self) -> dict[str, Any]:
        """The ``CachedContent`` as Google answers it: never its contents."""
        out: dict[str, Any] = {
            "name": self.name,
            "model": self.model,
            "createTime": rfc3339(self.created),
            "updateTime": rfc3339(self.updated or self.created),
            "expireTime": rfc3339(self.expires),
        }
        if self.display_name is not None:
            out["displayName"] = self.display_name
        out["usageMetadata"] = {"totalTokenCount": self.prefix.tokens}
        return out


class CacheBook:
    """The last ``capacity`` caches, by scope and id."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._caches: OrderedDict[tuple[str, str], StoredCache] = OrderedDict()

    def __len__(self) -> int:
        return len(self._caches)

    def clear(self) -> None:
        self._caches.clear()

    def put(self, record: StoredCache) -> None:
        self._caches[(record.scope, record.id)] = record
        while len(self._caches) > self.capacity:
            self._caches.popitem(last=False)

    def has(self, scope: str, cache_id: str) -> bool:
        return (scope, cache_id) in self._caches

    def get(self, scope: str, cache_id: str, now: float) -> StoredCache | None:
        record = self._caches.get((scope, cache_id))
        if record is not None and now >= record.expires:
            del self._caches[(scope, cache_id)]
            return None
        return record

    def delete(self, scope: str, cache_id: str, now: float) -> bool:
        return self.get(scope, cache_id, now) is not None and self._caches.pop((scope, cache_id)) is not None

    def newest_first(self, scope: str, now: float) -> list[StoredCache]:
        for key in [k for k, c in self._caches.items() if now >= c.expires]:
            del self._caches[key]
        return sorted(
            (c for c in self._caches.values() if c.scope == scope), key=lambda c: c.seq, reverse=True
        )
