"""What rendering derives from valid values: the daemon's Settings, secrets and config, network."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from knowctl.deploy.values.base import ValuesError, dotted_key
from knowctl.deploy.values.schema import Values
from knowctl.redact import carries_credentials
from knowctl.settings import CREDENTIAL_URL_FIELDS, SECRET_FIELDS, Settings


class IsolatedSettings(Settings):
    """Settings built only from given values: the renderer's own env and files must not leak in."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def grace_period(values: Values, settings: Settings) -> int:
    """terminationGracePeriodSeconds: preStop + queue wait + one upstream call, plus slack."""
    g = values.gateway
    queue = max(g.queue_timeout_seconds, settings.queue_timeout)
    return math.ceil(g.pre_stop_seconds + queue + settings.upstream_timeout + g.extra_grace_seconds)


@dataclass(frozen=True)
class ComposeNetwork:
    """The Compose project's network: nginx has a fixed address below ``ip_range``, where
    Docker hands out the other containers' addresses, so no replica can take it first."""

    subnet: str
    gateway: str  # the bridge's own address
    ip_range: str
    nginx: str


def compose_network(values: Values) -> ComposeNetwork:
    import ipaddress

    net = ipaddress.ip_network(values.compose.subnet)
    lower, upper = net.subnets(prefixlen_diff=1)
    return ComposeNetwork(subnet=str(net), gateway=str(net[1]), ip_range=str(upper), nginx=str(lower[2]))


def trusted_proxies(values: Values, target: Literal["k8s", "compose"]) -> str:
    """The proxies of the topology rendered: nginx's fixed address (Compose), the ingress
    controller's pod ranges (Kubernetes, with the Ingress); empty: the peer is the client."""
    if target == "compose":
        return f"{compose_network(values).nginx}/32"
    return ",".join(values.ingress.trusted_proxies) if values.ingress.enabled else ""


def redis_host(values: Values, target: Literal["k8s", "compose"]) -> str:
    """The Redis Service (Kubernetes) or Compose service name the gateway connects to."""
    return f"{values.name}-redis" if target == "k8s" else "redis"


def gateway_settings(values: Values, target: Literal["k8s", "compose"] = "k8s") -> Settings:
    """The daemon's Settings in the container: defaults, what a deployment needs, then values."""
    base: dict[str, Any] = {"host": "0.0.0.0", "port": values.gateway.port, "log_format": "json"}
    # While the store is unreachable each daemon keeps 1/max_replicas of every limit, so the
    # most daemons that can run at once must be the divisor: the autoscaler's ceiling on
    # Kubernetes, the fixed replica count on Compose (times worker processes per container).
    gateway = values.gateway
    autoscaled = target == "k8s" and gateway.autoscaling.enabled
    daemons = gateway.autoscaling.max_replicas if autoscaled else gateway.replicas
    base["max_replicas"] = daemons * int(values.settings.get("workers", 1))
    if values.redis.enabled:
        base["store_url"] = f"redis://{redis_host(values, target)}:6379/0"
    base["trusted_proxies"] = trusted_proxies(values, target)
    try:
        return IsolatedSettings(**{**base, **values.settings})
    except ValidationError as exc:
        raise ValuesError(
            "; ".join(f"settings.{dotted_key(err['loc'])}: {err['msg']}" for err in exc.errors())
        ) from exc


def secret_files(values: Values, settings: Settings) -> list[str]:
    """The secret settings the pods (containers) read from files: ``secret.fields`` as given,
    else the ones these values use. A KNOWCTL_<NAME>_FILE that cannot be read stops the
    daemon at start, so none is mounted that the operator has no reason to provide."""
    if values.secret.fields is not None:
        return list(values.secret.fields)
    used = ["admin_token"]
    # ADC or a service-account file replaces the key; a pool's deployments hold their own.
    if not settings.google_credentials and not settings.upstreams:
        used.append("google_api_key")
    if settings.cdn_purge_url:
        used.append("cdn_api_token")
    return sorted(used)


def pool_key_files(settings: Settings) -> list[str]:
    """The Secret keys holding a pool's API keys: one per Gemini API deployment that names no
    key file or credentials of its own, ``upstream-<name>-api-key``; the config points the
    deployment's ``api_key_file`` at it (``config_document``)."""
    return [
        f"upstream-{d.name}-api-key"
        for d in settings.upstreams
        if d.family == "gemini" and d.api_key is None and d.api_key_file is None and not d.credentials
    ]


def url_secrets(settings: Settings) -> dict[str, str]:
    """The URL settings of the values that carry credentials: rendered into a Secret (a
    Compose secret file) and read through KNOWCTL_<NAME>_FILE, never into the config."""
    found = {name: getattr(settings, name) for name in sorted(CREDENTIAL_URL_FIELDS)}
    return {
        name: value for name, value in found.items() if isinstance(value, str) and carries_credentials(value)
    }


def config_document(
    settings: Settings, files: list[str] | tuple[str, ...] = (), key_dir: str | None = None
) -> dict[str, Any]:
    """Every setting that is neither secret nor read from a file (``files``, and any URL with
    credentials), as the YAML config file the daemon reads (KNOWCTL_CONFIG). With
    ``key_dir``, where the Secret is mounted, each deployment of ``pool_key_files`` reads its
    key from there."""
    dumped = settings.model_dump(mode="json")
    left_out = SECRET_FIELDS | set(files) | set(url_secrets(settings))
    document = {name: dumped[name] for name in Settings.model_fields if name not in left_out}
    keyed = set(pool_key_files(settings))
    upstreams = []
    for d in document.get("upstreams", []):
        d = {k: v for k, v in d.items() if v is not None and k != "api_key"}  # defaults stay implicit
        if key_dir is not None and f"upstream-{d['name']}-api-key" in keyed:
            d["api_key_file"] = f"{key_dir}/upstream-{d['name']}-api-key"
        upstreams.append(d)
    if upstreams:
        document["upstreams"] = upstreams
    return document
