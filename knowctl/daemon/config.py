"""Settings sliced per component, in one place: each part of the daemon takes the plain
values it needs, built here from the one validated ``Settings``, and not the whole object.
Each slice is defined next to the component that takes it; the app calls these functions."""

from __future__ import annotations

from knowctl.daemon.admin.api import AdminConfig
from knowctl.daemon.cache.answers import CacheConfig
from knowctl.daemon.cache.items import ItemsConfig
from knowctl.daemon.callers.registry import CallersConfig, Tier
from knowctl.daemon.interactions.book import InteractionsConfig
from knowctl.daemon.pipeline.handler import HandlerConfig
from knowctl.daemon.pipeline.live import LiveConfig
from knowctl.daemon.quota.provider import ProviderConfig
from knowctl.daemon.resources.book import ResourcesConfig
from knowctl.daemon.topics.cdn import CdnConfig
from knowctl.daemon.topics.config import TopicsConfig
from knowctl.daemon.upstream.client import UpstreamConfig
from knowctl.daemon.upstream.credentials import CredentialsConfig
from knowctl.net.uvicorn_glue import TransportLimits
from knowctl.policy.callers import parse_networks
from knowctl.policy.fallback import Fallbacks
from knowctl.policy.limits import parse_limits
from knowctl.policy.paths import Family
from knowctl.policy.pool import DEFAULT, Deployment, Pool, Served
from knowctl.policy.priority import Priority, parse_shares
from knowctl.policy.quota import Limits, QuotaConfig
from knowctl.settings import Settings, UpstreamDeployment


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


def upstream_pool(settings: Settings) -> Pool:
    """The upstream deployments: those configured, or the pool of one of the single-upstream
    settings (``upstream_url``, Google's hosts otherwise)."""
    quota = quota_config(settings)
    if not settings.upstreams:
        return Pool([Deployment(DEFAULT, base_url=settings.upstream_url)], quota)
    return Pool([_deployment(d, settings.upstreams_cross_family) for d in settings.upstreams], quota)


def _deployment(d: UpstreamDeployment, cross_family: bool) -> Deployment:
    models = None
    if d.models is not None:
        models = {
            name: Served(
                m.upstream_model or name,
                Limits(m.rpm, m.rpd, m.tpm, m.tpd),
                {tier: Limits(t.rpm, t.rpd, t.tpm, t.tpd) for tier, t in m.tiers.items()},
            )
            for name, m in d.models.items()
        }
    vertex = d.family == "vertex"
    return Deployment(
        d.name,
        Family(d.family),
        d.order,
        models,
        base_url=d.url,
        project=d.project if vertex else None,
        location=d.location if vertex else None,
        tiers={Priority[p]: tier for p, tier in d.service_tiers.items()},
        learn_from=d.learned_start_rpm,
        proxy=d.proxy,
        cross_family=cross_family,
    )


def credentials_configs(settings: Settings) -> dict[str, CredentialsConfig]:
    """Each deployment's own credentials, by name (secrets read from their files now)."""
    if not settings.upstreams:
        api_key = settings.google_api_key.get_secret_value() if settings.google_api_key else None
        return {DEFAULT: CredentialsConfig(api_key=api_key, google_credentials=settings.google_credentials)}
    return {
        d.name: CredentialsConfig(api_key=d.key(), google_credentials=d.credentials)
        for d in settings.upstreams
    }


def provider_config(settings: Settings, pool: Pool | None = None) -> ProviderConfig:
    """``pool``: the gateway's, shared with its upstream client (made from ``settings`` if not given)."""
    return ProviderConfig(
        quota=quota_config(settings),
        pool=pool or upstream_pool(settings),
        token_estimator=settings.token_estimator,
        token_bytes_per_token=settings.token_bytes_per_token,
        default_max_output_tokens=settings.default_max_output_tokens,
        queue_size=settings.queue_size,
        queue_per_caller=settings.queue_per_caller,
        queue_timeout=settings.queue_timeout,
        upstream_backoff_s=settings.upstream_backoff_s,
        upstream_backoff_max_s=settings.upstream_backoff_max_s,
        max_replicas=settings.max_replicas,
        store_timeout=settings.store_timeout,
    )


def transport_limits(settings: Settings) -> TransportLimits:
    return TransportLimits(
        max_buffered_bytes=settings.max_buffered_bytes,
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.client_header_timeout,
        body_timeout=settings.client_body_timeout,
        max_connections_per_client=settings.max_connections_per_client,
        exempt=parse_networks(settings.trusted_proxies),
        max_ws_message_bytes=settings.live_max_message_bytes,
    )


def upstream_config(settings: Settings) -> UpstreamConfig:
    return UpstreamConfig(
        max_connections=settings.upstream_max_connections,
        connect_timeout=settings.upstream_connect_timeout,
        timeout=settings.upstream_timeout,
    )


def callers_config(settings: Settings, holds_credentials: bool) -> CallersConfig:
    """``holds_credentials``: whether the gateway calls Google with credentials of its own
    (``UpstreamCredentials.holds_credentials``), which decides the default auth mode."""
    return CallersConfig(
        mode=settings.resolved_auth_mode(holds_credentials),
        holds_credentials=holds_credentials,
        simulate=settings.simulate,
        max_replicas=settings.max_replicas,
        store_timeout=settings.store_timeout,
        trusted_proxies=parse_networks(settings.trusted_proxies),
        user_windows=parse_limits(settings.user_limits),
        ip_windows=parse_limits(settings.ip_limits),
        tiers={name: Tier(parse_limits(t.limits), t.max_priority) for name, t in settings.tiers.items()},
        unauthenticated_max_priority=Priority[settings.unauthenticated_max_priority],
        cache_scope=settings.cache_scope,
    )


def cache_config(settings: Settings) -> CacheConfig:
    return CacheConfig(
        enabled=settings.cache_enabled,
        l1_ttl=settings.cache_l1_ttl,
        l2_ttl=settings.cache_l2_ttl,
        stale_ttl=settings.cache_stale_ttl,
        l1_max_entries=settings.cache_l1_max_entries,
        l1_max_bytes=settings.cache_l1_max_bytes,
        coalesce_timeout=settings.coalesce_timeout,
    )


def handler_config(settings: Settings) -> HandlerConfig:
    return HandlerConfig(
        max_body_bytes=settings.max_body_bytes,
        default_priority=Priority[settings.default_priority],
        allowed_actions=frozenset(settings.allowed_action_names),
        batch_as_one_call=frozenset(m for m, q in settings.quota_models.items() if q.batch_counts == "call"),
        fallbacks=Fallbacks(
            chains={m: tuple(chain) for m, chain in settings.fallbacks.items()},
            order={Priority[p]: tuple(order) for p, order in settings.overflow_order.items()},
        ),
        live=LiveConfig(
            max_session_s=settings.live_max_session_s,
            max_sessions_per_user=settings.live_max_sessions_per_user,
            setup_timeout_s=settings.live_setup_timeout_s,
            max_message_bytes=settings.live_max_message_bytes,
        ),
    )


def items_config(settings: Settings) -> ItemsConfig:
    return ItemsConfig(
        enabled=settings.cache_enabled,
        ttl_s=settings.cache_embeddings_ttl,
        local_max_entries=settings.cache_l1_max_entries,
        local_max_bytes=settings.cache_l1_max_bytes,
    )


def interactions_config(settings: Settings) -> InteractionsConfig:
    return InteractionsConfig(ttl_s=settings.interactions_ttl)


# Google's resumable upload URLs stay valid for about a week; an upload's record as long.
UPLOAD_TTL_S = 7 * 86400.0


def resources_config(settings: Settings) -> ResourcesConfig:
    return ResourcesConfig(upload_ttl_s=UPLOAD_TTL_S, upload_bytes_per_day=settings.upload_bytes_per_day)


def holds_google_credentials(settings: Settings) -> bool:
    """Whether the gateway calls Google with credentials of its own, as
    ``UpstreamCredentials.from_config`` decides (knowctl/daemon/upstream/credentials.py)."""
    if settings.upstreams:
        return any(d.api_key or d.api_key_file or d.credentials for d in settings.upstreams)
    return settings.google_api_key is not None or bool(settings.google_credentials)


def cdn_config(settings: Settings) -> CdnConfig:
    token = settings.cdn_api_token.get_secret_value() if settings.cdn_api_token else None
    return CdnConfig(
        purge_url=settings.cdn_purge_url,
        zone_id=settings.cdn_zone_id,
        api_token=token,
        public_base_url=settings.public_base_url,
    )


def topics_config(settings: Settings) -> TopicsConfig:
    auth_mode = settings.resolved_auth_mode(holds_google_credentials(settings))
    return TopicsConfig(
        auth_mode=auth_mode,
        topics_generate=settings.resolved_topics_generate(auth_mode),
        topics_allowed=frozenset(settings.topics_allowed),
        topics_prompt_template=settings.topics_prompt_template,
        topics_model=settings.topics_model,
        topics_public=settings.topics_public,
        topics_browser_max_age=settings.topics_browser_max_age,
        topics_cdn_max_age=settings.topics_cdn_max_age,
        topics_popular_threshold=settings.topics_popular_threshold,
        topics_popular_window_s=settings.topics_popular_window_s,
        topics_refresh_fraction=settings.topics_refresh_fraction,
        topics_refresh_interval=settings.topics_refresh_interval,
        vertex_project=settings.vertex_project,
        vertex_location=settings.vertex_location,
        cdn=cdn_config(settings),
    )


def admin_config(settings: Settings) -> AdminConfig:
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    return AdminConfig(token=token, metrics_require_token=settings.metrics_require_token)
