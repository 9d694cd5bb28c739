"""Admin routes of the provider quota: its windows, holds and queue, per model."""

from __future__ import annotations

from knowctl.daemon.admin.api import AdminRequest, AdminResponse, Route
from knowctl.daemon.quota.provider import ProviderQuota


def routes(quota: ProviderQuota) -> list[Route]:
    async def stats(request: AdminRequest) -> AdminResponse:
        return AdminResponse(await quota.stats(request.query.get("model") or None))

    return [("GET", "/api/quota/stats", stats)]
