"""Admin routes of the answer cache: invalidation by pattern, and its counters."""

from __future__ import annotations

from knowctl.daemon.admin.api import AdminError, AdminRequest, AdminResponse, Route
from knowctl.daemon.cache.answers import AnswerCache
from knowctl.policy import cachekey
from knowctl.store import StoreUnavailable


def routes(cache: AnswerCache) -> list[Route]:
    async def invalidate(request: AdminRequest) -> AdminResponse:
        body = request.json_object()
        pattern = body.get("pattern")
        dry_run = body.get("dry_run", False)
        limit = body.get("limit", 100)
        if not isinstance(dry_run, bool):
            raise AdminError(400, "dry_run must be true or false")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise AdminError(400, "limit must be an integer >= 0 (0: every matching key)")
        if not isinstance(pattern, str):
            raise AdminError(400, 'pattern is required, e.g. {"pattern": "topic:photosynthesis:*"}')
        try:
            result = await cache.invalidate(pattern, dry_run=dry_run, limit=limit)
        except cachekey.BadPattern as exc:
            raise AdminError(400, f"pattern: {exc}") from None
        except StoreUnavailable as exc:
            cache.store_failed(exc)
            raise AdminError(503, f"the store is unavailable, nothing was invalidated: {exc}") from None
        return AdminResponse(result)

    async def stats(request: AdminRequest) -> AdminResponse:
        return AdminResponse(cache.stats())

    return [("POST", "/api/cache/invalidate", invalidate), ("GET", "/api/cache/stats", stats)]
