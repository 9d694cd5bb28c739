"""The provider quota's report, what /api/quota/stats answers: per model and window (used,
in flight, limit, reset), queue depths, decisions and holds; and for the whole daemon (store,
degraded or recovering, the wait queue)."""

from __future__ import annotations

import time
from typing import Any

from knowctl.daemon import metrics
from knowctl.daemon.quota.models import Models
from knowctl.daemon.windows.store import FailoverWindows
from knowctl.policy import quota as qp
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
        found: dict[str, Any] = {}
        if m.windows:
            for w, u in zip(m.windows, await windows.usage(m.scope, m.windows), strict=True):
                metrics.QUOTA_USED_BY(models.label(m), w.name).set(u.used)
                found[w.name] = qp.window_stats(w, u.used, max(0, m.inflight[w.name]), u.reset_after, now)
        held = m.hold_until - now
        out[name] = {
            "limited": bool(m.windows),
            "windows": found,
            "queue": {p.name: m.queue.depth(p) for p in Priority},
            "counts": dict(m.counts),
            "exhausted": {"remaining_s": round(held, 3), "until": qp.iso_utc(m.hold_until)}
            if held > 0
            else None,
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
