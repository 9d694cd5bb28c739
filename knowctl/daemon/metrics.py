"""Prometheus metrics of the daemon: every family is declared here, in one place.

Names follow Prometheus conventions (``knowctl_`` namespace, base units, ``_total`` for
counters). Dashboards and alert rules in ``templates/`` query only these names; a test
scrapes a running daemon and checks that every name they use is really exported.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

REGISTRY = CollectorRegistry(auto_describe=True)

M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """The labelled children of one family, each looked up once. ``family.labels()`` takes a
    lock and builds the label tuple on every call; on the hot path that was several per
    request. Label values are bounded (routes, statuses, models, windows), and prometheus
    keeps every child anyway, so this adds no entries of its own."""

    __slots__ = ("_children", "_family")

    def __init__(self, family: M) -> None:
        self._family: M = family
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._family.labels(*values)
        return child


OTHER = "other"


class BoundedLabels:
    """Label values that come from requests (model names), kept to a bounded set: the names
    configured, plus those the provider has answered successfully, up to ``limit``;
    everything else is ``other``. A made-up name in a request never makes a series."""

    __slots__ = ("_known", "_limit")

    def __init__(self, limit: int) -> None:
        self._known: set[str] = {"-"}
        self._limit = limit

    def allow(self, names: Iterable[str]) -> None:
        self._known.update(names)

    def learn(self, name: str) -> None:
        if len(self._known) < self._limit:
            self._known.add(name)

    def __call__(self, name: str) -> str:
        return name if name in self._known else OTHER


# Models as metric labels (upstream and quota families).
MODELS = BoundedLabels(limit=256)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HTTP_REQUESTS = Counter(
    "knowctl_http_requests",
    "HTTP requests answered by the daemon, by route and status code.",
    ["route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "knowctl_http_request_duration_seconds",
    "Time from request to the end of the answer, by route.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_REQUESTS = Counter(
    "knowctl_upstream_requests",
    "Calls forwarded upstream, by model and outcome (HTTP status, or timeout / unreachable).",
    ["model", "outcome"],
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "knowctl_upstream_duration_seconds",
    "Upstream call latency until the answer's headers arrived, by model.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
STORE_UP = Gauge(
    "knowctl_store_up",
    "1 while the shared store answers, 0 while it is unreachable (the daemon runs degraded).",
    multiprocess_mode="livemin",
    registry=REGISTRY,
)
STORE_UP.set(1)

# --- provider quota ------------------------------------------------------------------------
QUOTA_USED = Gauge(
    "knowctl_quota_used",
    "Units used in the provider quota window (requests or tokens), by model and window.",
    ["model", "window"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
QUOTA_LIMIT = Gauge(
    "knowctl_quota_limit",
    "Configured provider quota limit, by model and window.",
    ["model", "window"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
UPSTREAM_QUOTA_USED = Gauge(
    "knowctl_upstream_quota_used",
    "Units used in one deployment's provider quota window, by deployment, model and window.",
    ["deployment", "model", "window"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
UPSTREAM_QUOTA_LIMIT = Gauge(
    "knowctl_upstream_quota_limit",
    "Declared provider quota limit of one deployment, by deployment, model and window.",
    ["deployment", "model", "window"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
UPSTREAM_LEARNED = Gauge(
    "knowctl_upstream_learned_limit",
    "Requests per minute window learned for a deployment that declares no limit for the model.",
    ["deployment", "model"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
UPSTREAM_REFUSED = Counter(
    "knowctl_upstream_provider_refusals",
    "The provider's own 429s, by deployment and model (what learned capacity learns from).",
    ["deployment", "model"],
    registry=REGISTRY,
)
UPSTREAM_ADMITTED = Counter(
    "knowctl_upstream_admitted",
    "Calls the quota admitted at each deployment, by deployment and model.",
    ["deployment", "model"],
    registry=REGISTRY,
)
UPSTREAM_TIERS = Counter(
    "knowctl_upstream_service_tier_requests",
    "Calls sent with the service tier their priority maps to at the deployment, by deployment and tier.",
    ["deployment", "tier"],
    registry=REGISTRY,
)
UPSTREAM_TIER_DOWNGRADES = Counter(
    "knowctl_upstream_service_tier_downgrades",
    "Calls that asked for the priority tier and were served at standard, by deployment and model.",
    ["deployment", "model"],
    registry=REGISTRY,
)
QUOTA_DECISIONS = Counter(
    "knowctl_quota_decisions",
    "Quota decisions by model: admitted, queued, refused, fallback (stale answer served).",
    ["model", "decision"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "knowctl_queue_depth",
    "Requests waiting for provider quota in this daemon, by priority.",
    ["priority"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
QUOTA_UNRESERVED = Gauge(
    "knowctl_quota_unreserved_output_tokens",
    "Output tokens the calls in flight may still take beyond what they reserved, by model: "
    "the most by which their token windows can go over the limit (total-token mode).",
    ["model"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
TOKEN_ESTIMATE_ERROR = Histogram(
    "knowctl_token_estimate_error_tokens",
    "Actual minus reserved tokens per call: how far the pre-call estimate was off.",
    buckets=(-4096, -1024, -256, -64, -16, -4, 0, 4, 16, 64, 256, 1024, 4096),
    registry=REGISTRY,
)

# --- Live API -----------------------------------------------------------------------------------
LIVE_SESSIONS = Gauge(
    "knowctl_live_sessions",
    "Live API sessions open on this daemon.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
LIVE_SESSIONS_ENDED = Counter(
    "knowctl_live_sessions_ended",
    "Live API sessions by how they ended: closed (by either side), refused (before the "
    "upstream), expired (the session length limit), failed (the upstream), draining.",
    ["outcome"],
    registry=REGISTRY,
)
LIVE_FRAMES = Counter(
    "knowctl_live_frames",
    "Live API messages relayed, by direction (upstream: client to Google; downstream).",
    ["direction"],
    registry=REGISTRY,
)
LIVE_BYTES = Counter(
    "knowctl_live_bytes",
    "Live API message bytes relayed, by direction.",
    ["direction"],
    registry=REGISTRY,
)

# --- cache ------------------------------------------------------------------------------------
# Each cacheable lookup counts once at l1; only l1 misses are counted at l2.
CACHE_REQUESTS = Counter(
    "knowctl_cache_requests",
    "Cache lookups by layer (l1, l2) and result (hit, miss).",
    ["layer", "result"],
    registry=REGISTRY,
)

# The children the request path labels on every call.
HTTP_REQUESTS_BY = Children(HTTP_REQUESTS)  # (route, status)
LIVE_FRAMES_BY = Children(LIVE_FRAMES)  # (direction,)
LIVE_BYTES_BY = Children(LIVE_BYTES)  # (direction,)
LIVE_SESSIONS_ENDED_BY = Children(LIVE_SESSIONS_ENDED)  # (outcome,)
HTTP_DURATION_BY = Children(HTTP_DURATION)  # (route,)
UPSTREAM_REQUESTS_BY = Children(UPSTREAM_REQUESTS)  # (model, outcome)
UPSTREAM_DURATION_BY = Children(UPSTREAM_DURATION)  # (model,)
CACHE_REQUESTS_BY = Children(CACHE_REQUESTS)  # (layer, result)
QUOTA_USED_BY = Children(QUOTA_USED)  # (model, window)
UPSTREAM_QUOTA_USED_BY = Children(UPSTREAM_QUOTA_USED)  # (deployment, model, window)
UPSTREAM_ADMITTED_BY = Children(UPSTREAM_ADMITTED)  # (deployment, model)
UPSTREAM_LEARNED_BY = Children(UPSTREAM_LEARNED)  # (deployment, model)
UPSTREAM_REFUSED_BY = Children(UPSTREAM_REFUSED)  # (deployment, model)
UPSTREAM_TIERS_BY = Children(UPSTREAM_TIERS)  # (deployment, tier)
UPSTREAM_TIER_DOWNGRADES_BY = Children(UPSTREAM_TIER_DOWNGRADES)  # (deployment, model)
QUOTA_DECISIONS_BY = Children(QUOTA_DECISIONS)  # (model, decision)
QUEUE_DEPTH_BY = Children(QUEUE_DEPTH)  # (priority,)
QUOTA_UNRESERVED_BY = Children(QUOTA_UNRESERVED)  # (model,)

ProcessCollector(registry=REGISTRY)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def exposition() -> bytes:
    """The metrics page. With ``--workers N`` each worker writes its values to files in
    PROMETHEUS_MULTIPROC_DIR, and whichever worker is scraped sums them all (the gauges
    say how: live sums, minimums or maximums), so one scrape sees the whole daemon."""
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(registry))
    return bytes(generate_latest(REGISTRY))
