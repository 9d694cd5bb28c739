"""Prometheus families of the answer cache and the topic API (beside knowctl_cache_requests,
declared in metrics.py). Registered on the daemon's one registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from knowctl.daemon.metrics import REGISTRY, Children

L1_ENTRIES = Gauge(
    "knowctl_cache_l1_entries", "Answers held in this daemon's in-process cache.", registry=REGISTRY
)
L1_BYTES = Gauge("knowctl_cache_l1_bytes", "Bytes held in this daemon's in-process cache.", registry=REGISTRY)
EVICTIONS = Counter(
    "knowctl_cache_evictions", "In-process cache entries dropped to make room (LRU).", registry=REGISTRY
)
SAVES = Counter(
    "knowctl_cache_saves",
    "Answers offered to the cache: stored, or refused (not a complete success).",
    ["result"],
    registry=REGISTRY,
)
SAVES_BY = Children(SAVES)  # (result,)
STALE_SERVED = Counter(
    "knowctl_cache_stale_served",
    "Stale answers served as a fallback (quota or upstream gone).",
    registry=REGISTRY,
)
COALESCED = Counter(
    "knowctl_cache_coalesced_requests",
    "Requests answered by an identical call already in flight (this daemon or another).",
    registry=REGISTRY,
)
INVALIDATIONS = Counter(
    "knowctl_cache_invalidations", "Invalidation requests carried out (not dry runs).", registry=REGISTRY
)
INVALIDATED_KEYS = Counter(
    "knowctl_cache_invalidated_keys", "Cache entries removed by invalidation.", registry=REGISTRY
)
STORE_ERRORS = Counter(
    "knowctl_cache_store_errors",
    "Cache reads or writes the shared store did not answer (served as a miss / skipped).",
    registry=REGISTRY,
)
TOPIC_REQUESTS = Counter(
    "knowctl_topic_requests", "GET /topics/{topic} answers by status code.", ["status"], registry=REGISTRY
)
TOPIC_REFRESHES = Counter(
    "knowctl_topic_refreshes",
    "Popular-topic background regenerations by result (generated, failed).",
    ["result"],
    registry=REGISTRY,
)
CDN_PURGES = Counter(
    "knowctl_cdn_purges", "CDN purge calls by result (ok, failed).", ["result"], registry=REGISTRY
)
EMBEDDING_ITEMS = Counter(
    "knowctl_cache_embedding_items",
    "Texts of embedding calls: found kept (hit) or embedded upstream (miss).",
    ["result"],
    registry=REGISTRY,
)
EMBEDDING_ITEMS_BY = Children(EMBEDDING_ITEMS)  # (result,)
