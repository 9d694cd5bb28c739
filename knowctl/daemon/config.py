"""Settings sliced per component, in one place: each part of the daemon takes the plain
values it needs, built here from the one validated ``Settings``, and not the whole object."""

from __future__ import annotations

from knowctl.net.uvicorn_glue import TransportLimits
from knowctl.policy.callers import parse_networks
from knowctl.policy.priority import parse_shares
from knowctl.policy.quota import Limits, QuotaConfig
from knowctl.settings import Settings


def quota_config(settings: Settings) -> QuotaConfig:
    models = {name: Limits(q.rpm, q.rpd, q.tpm, q.tpd) for name, q in settings.quota_models.items()}
    return QuotaConfig(
        default=Limits(settings.quota_rpm, settings.quota_rpd, settings.quota_tpm, settings.quota_tpd),
        models=models,
        minute_s=settings.quota_minute_s,
        day_s=settings.quota_day_s,
        day_tz=settings.quota_day_tz,
        token_mode=settings.quota_tokens,
        shares=parse_shares(settings.priority_shares),
    )


def transport_limits(settings: Settings) -> TransportLimits:
    return TransportLimits(
        max_buffered_bytes=settings.max_buffered_bytes,
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.client_header_timeout,
        body_timeout=settings.client_body_timeout,
        max_connections_per_client=settings.max_connections_per_client,
        exempt=parse_networks(settings.trusted_proxies),
    )
