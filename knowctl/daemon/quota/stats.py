"""The provider quota's report, what /api/quota/stats answers: per model and window (used,
in flight, limit, reset), queue depths, decisions and holds; and for the whole daemon (store,
degraded or recovering, the wait queue)."""

from __future__ import annotations

import time
from typing import Any

from knowctl.daemon import metrics
from knowctl.daemon.quota.models import Lane, Models, ModelState
from knowctl.daemon.windows.store import FailoverWindows
from knowctl.policy import quota as qp
from knowctl.policy.pool import Pool
from knowctl.policy.priority import Priority


async def report(
    models: Models,
    windows: FailoverWindows,
    cfg: qp.QuotaConfig,
    queue: dict[str, Any],
    model: str | None = None,
) -> dict[str, Any]:
    """``model`` alone, or every model met or configured; ``queue`` is the daemon's wait
    queue as reported (waiting, size, timeout_s). Refreshes the usage gauges it reads."""
    names = [model] if model else sorted(set(models) | set(cfg.models))
    now = time.time()
    out: dict[str, Any] = {}
    for name in names:
        m = models.known(name)
        lanes = {_named(lane): await lane_report(models, windows, m, lane, now) for lane in m.lanes}
        single = len(m.lanes) == 1 and m.lanes[0].deployment.legacy
        out[name] = {
            "limited": m.limited,
            "windows": lanes[m.lanes[0].name]["windows"] if single else {},
            "deployments": lanes,
            "queue": {p.name: m.queue.depth(p) for p in Priority},
            "counts": dict(m.counts),
            "exhausted": _held(m.hold_until, now),
        }
    return {
        "degraded": windows.degraded,
        # After an outage: some windows still also count against this daemon's share.
        "recovering": windows.local.recovering,
        "max_replicas": windows.local.replicas,
        "store": windows.shared.backend,
        "tokens": cfg.token_mode,
        "queue": queue,
        "models": out,
    }


async def lane_report(
    models: Models, windows: FailoverWindows, m: ModelState, lane: Lane, now: float
) -> dict[str, Any]:
    """One deployment's part of one model: each window used, in flight and limit, its hold,
    and the calls this daemon admitted there. Refreshes the usage gauges it reads."""
    found: dict[str, Any] = {}
    if lane.windows:
        label = models.label(m)
        for w, u in zip(lane.windows, await windows.usage(lane.scope, lane.windows), strict=True):
            if lane.deployment.legacy:
                metrics.QUOTA_USED_BY(label, w.name).set(u.used)
            else:
                metrics.UPSTREAM_QUOTA_USED_BY(lane.name, label, w.name).set(u.used)
            found[w.name] = qp.window_stats(w, u.used, max(0, lane.inflight[w.name]), u.reset_after, now)
    return {
        "order": lane.deployment.order,
        "windows": found,
        "held": _held(lane.hold_until, now),
        "health": "held" if lane.hold_until > now else "failing" if lane.streak else "ok",
        "admitted": lane.admitted,
        "recent": lane.recent.total(now),
        "learned": None
        if lane.learned is None
        else {
            "limit": round(lane.learned.limit, 2),
            "probing": lane.learned.probing,
            "refusals": lane.learned.refusals,
        },
    }


async def upstreams(models: Models, windows: FailoverWindows, pool: Pool) -> list[dict[str, Any]]:
    """Per deployment of ``pool``, each model it has served or declares (``lane_report``),
    with its share of the model's calls this daemon admitted in the last minute."""
    now = time.time()
    out = []
    for d in pool.deployments:
        served: dict[str, Any] = {}
        for name in sorted(models):
            m = models.known(name)
            total = sum(other.recent.total(now) for other in m.lanes)
            for lane in (lane for lane in m.lanes if lane.deployment is d):
                report = await lane_report(models, windows, m, lane, now)
                report["share_1m"] = round(report["recent"] / total, 4) if total else None
                served[name if lane.tier is None else f"{name} ({lane.tier})"] = report
        out.append({"name": d.name, "order": d.order, "models": served})
    return out


def _named(lane: Lane) -> str:
    """A lane as the report names it: its deployment, and the tier it keeps apart."""
    return lane.name if lane.tier is None else f"{lane.name}.{lane.tier}"


def _held(until: float, now: float) -> dict[str, Any] | None:
    held = until - now
    return {"remaining_s": round(held, 3), "until": qp.iso_utc(until)} if held > 0 else None
