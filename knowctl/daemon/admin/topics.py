"""Admin routes of the topic API: what is popular, and prewarming topics by name."""

from __future__ import annotations

import collections

from knowctl.daemon.admin.api import AdminError, AdminRequest, AdminResponse, Route
from knowctl.daemon.topics.service import MAX_PREWARM, TopicService
from knowctl.policy import cachekey
from knowctl.store import StoreUnavailable


def routes(topics: TopicService) -> list[Route]:
    async def popular(request: AdminRequest) -> AdminResponse:
        s = topics.config
        try:
            ranked = await topics.popular()
        except StoreUnavailable as exc:
            raise AdminError(503, f"the store is unavailable: {exc}") from None
        limit = request.query.get("limit", "100")
        top = ranked[: int(limit) if limit.isdigit() else 100]
        return AdminResponse(
            {
                "threshold": s.topics_popular_threshold,
                "window_s": s.topics_popular_window_s,
                "topics": [
                    {"topic": t, "requests": n, "popular": n >= s.topics_popular_threshold} for t, n in top
                ],
                "refresh": {
                    "interval_s": s.topics_refresh_interval,
                    "fraction": s.topics_refresh_fraction,
                    "slots": list(topics.refresh_slots),
                    "last": topics.last_refresh,
                },
            }
        )

    async def prewarm(request: AdminRequest) -> AdminResponse:
        body = request.json_object()
        names = body.get("topics")
        force = body.get("force", False)
        if not isinstance(names, list) or not all(isinstance(t, str) for t in names):
            raise AdminError(400, 'topics must be a list of topic names, e.g. {"topics": ["photosynthesis"]}')
        if len(names) > MAX_PREWARM:
            raise AdminError(400, f"at most {MAX_PREWARM} topics per call")
        if not isinstance(force, bool):
            raise AdminError(400, "force must be true or false")
        results = []
        for topic in dict.fromkeys(names):
            try:
                cachekey.check_topic(topic)
            except ValueError as exc:
                results.append({"topic": topic, "status": "failed", "error": str(exc)})
                continue
            status, error = await topics.regenerate(topic, force=force)
            results.append({"topic": topic, "status": status, **({"error": error} if error else {})})
        summary = collections.Counter(r["status"] for r in results)
        return AdminResponse(
            {"results": results, "summary": {k: summary.get(k, 0) for k in ("generated", "fresh", "failed")}}
        )

    return [("GET", "/api/topics/popular", popular), ("POST", "/api/topics/prewarm", prewarm)]
