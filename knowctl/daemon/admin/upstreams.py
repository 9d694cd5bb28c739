"""Admin route of the upstream pool: each deployment as configured, and what the quota knows
of it (windows per model, holds, health, share of traffic)."""

from __future__ import annotations

from knowctl.daemon.admin.api import AdminRequest, AdminResponse, Route
from knowctl.daemon.quota.provider import ProviderQuota
from knowctl.daemon.upstream.client import UpstreamClient


def routes(quota: ProviderQuota, upstream: UpstreamClient) -> list[Route]:
    async def upstreams(request: AdminRequest) -> AdminResponse:
        reports = {report["name"]: report for report in await quota.upstreams()}
        deployments = [{**d, **reports.get(d["name"], {})} for d in upstream.describe()]
        return AdminResponse({"pooled": upstream.pooled, "deployments": deployments})

    return [("GET", "/api/upstreams", upstreams)]
