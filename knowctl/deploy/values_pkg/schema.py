"""The values schema for ``knowctl deploy render``: every knob, its default and its meaning.

Defaults here are the documented production defaults. A values file (YAML) and
``--set a.b=c`` overrides are merged on top and validated; a bad value is a
:class:`ValuesError` whose message names the dotted key. Gateway *settings* are not
re-declared here: ``settings`` is checked against :class:`knowctl.settings.Settings`
itself, so the ConfigMap always carries exactly the options the daemon knows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from knowctl import __version__
from knowctl.redact import carries_credentials
from knowctl.settings import CREDENTIAL_URL_FIELDS, SECRET_FIELDS, Settings

# Settings the Secret may hold as files: the secrets, and the URLs that may carry a password.
FILE_FIELDS = SECRET_FIELDS | CREDENTIAL_URL_FIELDS

_CPU = re.compile(r"^(\d+m|\d+(\.\d+)?)$")
_MEMORY = re.compile(r"^\d+(Ki|Mi|Gi|Ti)$")
_DURATION = re.compile(r"^\d+(ms|s|m|h|d)$")
# Redis memory sizes: bytes, or k/m/g (powers of 1000) and kb/mb/gb (powers of 1024).
_REDIS_SIZE = re.compile(r"^(\d+)(k|kb|m|mb|g|gb)?$", re.I)
_REDIS_UNITS = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
_BINARY_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
# With persistence, an AOF rewrite forks Redis: the child shares the parent's pages until
# either writes them, so a busy store can need its dataset twice over for the rewrite.
PERSISTENT_MAXMEMORY_SHARE = 0.5
# Without persistence Redis still needs room beyond maxmemory: client buffers, fragmentation.
MAXMEMORY_SHARE = 0.8
# The alert rules of templates/compose/prometheus/alerts.yml.j2 and how long each condition
# must hold before it fires (Prometheus' `for`).
ALERT_FOR = {
    "KnowctlHighErrorRate": "5m",
    "KnowctlQuotaNearLimit": "5m",
    "KnowctlLowCacheHitRate": "15m",
    "KnowctlDown": "1m",
    "KnowctlAllDown": "1m",
    "KnowctlStoreDown": "2m",
}


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity (250m, 1.5) in cores."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity with a binary unit (256Mi) in bytes."""
    return int(quantity[:-2]) * _BINARY_UNITS[quantity[-2:]]


def redis_bytes(size: str) -> int:
    """A Redis memory size (768mb, 1gb, 100000) in bytes; ValueError if it is not one."""
    match = _REDIS_SIZE.match(size.strip())
    if not match:
        raise ValueError(f"{size!r} is not a Redis memory size such as 512mb or 1gb")
    return int(match.group(1)) * _REDIS_UNITS[(match.group(2) or "").lower()]


def maxmemory_problem(maxmemory: int, limit: int, persistent: bool) -> str | None:
    """Why a Redis maxmemory does not fit its container's memory limit, or None."""
    mib = 1024**2
    if maxmemory == 0:
        return "maxmemory is 0 (no limit): Redis would grow until the container is killed"
    if maxmemory >= limit:
        return (
            f"maxmemory ({maxmemory // mib} MiB) is not below the container's memory limit "
            f"({limit // mib} MiB): the container is killed before Redis refuses a write"
        )
    share = PERSISTENT_MAXMEMORY_SHARE if persistent else MAXMEMORY_SHARE
    if maxmemory > limit * share:
        why = (
            "with appendonly an AOF rewrite forks Redis and the child can need as much memory again"
            if persistent
            else "Redis needs room beyond maxmemory for client buffers and fragmentation"
        )
        return (
            f"maxmemory ({maxmemory // mib} MiB) is above {int(share * 100)}% of the container's "
            f"memory limit ({limit // mib} MiB): {why}"
        )
    return None


class ValuesError(ValueError):
    """Values that cannot be rendered; the message names every offending key."""


class _Strict(BaseModel):
    # Unknown keys are typos: reject them rather than silently render defaults.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Resources(_Strict):
    """Kubernetes-style quantities; Compose gets the same numbers converted."""

    cpu_request: str = Field(default="250m", description="CPU request (Kubernetes quantity, e.g. 250m).")
    memory_request: str = Field(default="256Mi", description="Memory request (Ki/Mi/Gi/Ti).")
    cpu_limit: str = Field(default="1", description="CPU limit.")
    memory_limit: str = Field(default="512Mi", description="Memory limit.")

    @field_validator("cpu_request", "cpu_limit")
    @classmethod
    def _cpu(cls, value: str) -> str:
        if not _CPU.match(value):
            raise ValueError("must be a CPU quantity such as 250m or 1.5")
        return value

    @field_validator("memory_request", "memory_limit")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not _MEMORY.match(value):
            raise ValueError("must be a memory quantity such as 256Mi or 1Gi")
        return value

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        # The API server refuses a container whose request is above its limit.
        if cpu_cores(self.cpu_request) > cpu_cores(self.cpu_limit):
            raise ValueError(f"cpu_request ({self.cpu_request}) is above cpu_limit ({self.cpu_limit})")
        if memory_bytes(self.memory_request) > memory_bytes(self.memory_limit):
            raise ValueError(
                f"memory_request ({self.memory_request}) is above memory_limit ({self.memory_limit})"
            )
        return self


class Image(_Strict):
    repository: str = Field(default="ghcr.io/knowctl/knowctl", description="Gateway image repository.")
    tag: str = Field(
        default=__version__, description="Gateway image tag; 'latest' is refused (not reproducible)."
    )
    pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field(
        default="IfNotPresent", description="Kubernetes imagePullPolicy."
    )

    @field_validator("tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        if not value or value == "latest":
            raise ValueError("must be a pinned tag, not empty or 'latest'")
        return value


class Autoscaling(_Strict):
    enabled: bool = Field(default=True, description="Render a HorizontalPodAutoscaler (autoscaling/v2).")
    min_replicas: int = Field(default=3, ge=1, description="Fewest gateway pods the autoscaler keeps.")
    max_replicas: int = Field(default=10, ge=1, description="Most gateway pods the autoscaler runs.")
    cpu_percent: int = Field(default=70, ge=1, le=100, description="Target average CPU utilisation.")
    memory_percent: int = Field(default=80, ge=1, le=100, description="Target average memory utilisation.")

    @model_validator(mode="after")
    def _range(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self


class Gateway(_Strict):
    replicas: int = Field(default=3, ge=1, description="Gateway pods (Kubernetes) or containers (Compose).")
    port: int = Field(default=8080, ge=1, le=65535, description="Container port of the daemon.")
    resources: Resources = Field(default_factory=Resources, description="Gateway requests and limits.")
    autoscaling: Autoscaling = Field(
        default_factory=Autoscaling, description="HorizontalPodAutoscaler (Kubernetes only)."
    )
    min_available: int = Field(default=2, ge=0, description="PodDisruptionBudget minAvailable.")
    pre_stop_seconds: int = Field(
        default=10, ge=0, description="preStop sleep, so endpoints drop the pod before SIGTERM arrives."
    )
    queue_timeout_seconds: int = Field(
        default=30, ge=0, description="Longest a queued request may wait; part of the grace period."
    )
    extra_grace_seconds: int = Field(default=5, ge=0, description="Slack added to the computed grace period.")
    service_account_annotations: dict[str, str] = Field(
        default_factory=dict,
        description="ServiceAccount annotations, e.g. iam.gke.io/gcp-service-account for Workload Identity.",
    )


class Redis(_Strict):
    enabled: bool = Field(
        default=True, description="Run Redis with the gateway (else set settings.store_url)."
    )
    image: str = Field(default="redis:7.4.2-alpine", description="Redis image with a pinned tag.")
    storage: str = Field(default="5Gi", description="PersistentVolumeClaim size.")
    storage_class: str | None = Field(
        default=None, description="StorageClass; unset uses the cluster default."
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(
            cpu_request="100m", memory_request="256Mi", cpu_limit="1", memory_limit="1Gi"
        ),
        description="Redis requests and limits.",
    )
    maxmemory: str = Field(
        default="512mb",
        description="Redis maxmemory: at most half the memory limit with appendonly (an AOF "
        "rewrite forks), at most 80% without.",
    )
    appendonly: bool = Field(default=True, description="AOF persistence (see docs/redis.md).")
    maxmemory_policy: Literal["noeviction", "volatile-lru", "volatile-ttl", "allkeys-lru"] = Field(
        default="noeviction",
        description="What Redis does when full; noeviction never drops quota windows (see docs/redis.md).",
    )

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        if not _MEMORY.match(value):
            raise ValueError("must be a size such as 5Gi")
        return value

    @field_validator("maxmemory")
    @classmethod
    def _maxmemory(cls, value: str) -> str:
        redis_bytes(value)
        return value

    @model_validator(mode="after")
    def _fits(self) -> Redis:
        maxmemory = redis_bytes(self.maxmemory)
        problem = maxmemory_problem(maxmemory, memory_bytes(self.resources.memory_limit), self.appendonly)
        if problem:
            raise ValueError(f"{problem} (redis.maxmemory, redis.resources.memory_limit)")
        # The AOF is about the size of the data; a rewrite writes a new one beside it.
        if self.appendonly and memory_bytes(self.storage) < 2 * maxmemory:
            raise ValueError(
                f"storage ({self.storage}) is below twice maxmemory ({self.maxmemory}): an AOF "
                "rewrite writes a second file beside the first (redis.storage)"
            )
        return self


class Ingress(_Strict):
    enabled: bool = Field(default=True, description="Render the Ingress.")
    host: str = Field(default="knowctl.example.com", description="Public host name.")
    class_name: str = Field(default="nginx", description="IngressClass (annotations target ingress-nginx).")
    tls_secret: str = Field(default="knowctl-tls", description="TLS Secret (e.g. made by cert-manager).")
    rate_limit_rps: int = Field(default=50, ge=1, description="Per-client requests/second at the edge.")
    cors_allow_origin: str = Field(default="*", description="CORS allowed origin(s), comma separated.")
    max_body_size: str = Field(default="10m", description="Largest request body at the edge (nginx size).")
    trusted_proxies: list[str] = Field(
        default=["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
        description="Addresses of the ingress controller's pods (your pod CIDR): the gateway "
        "believes their X-Forwarded-For, so each visitor gets its own limits (rendered into "
        "settings.trusted_proxies unless that is given). The NetworkPolicy lets only the "
        "ingress namespace and Prometheus in.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return [_network(item) for item in value]


def _network(item: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_network(item.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{item!r} is not an IP address or CIDR") from None


_PORT_CIDR = re.compile(r"^(?P<cidr>[0-9a-fA-F.:]+(/\d+)?):(?P<port>\d{1,5})$")


class NetworkPolicy(_Strict):
    enabled: bool = Field(default=True, description="Render the NetworkPolicies.")
    ingress_namespace: str = Field(
        default="ingress-nginx",
        description="Namespace of the ingress controller allowed to reach the gateway.",
    )
    egress_cidrs: list[str] = Field(
        default=["0.0.0.0/0"],
        description="Where the gateway may open HTTPS (Google APIs have no fixed range).",
    )
    egress_except: list[str] = Field(
        default=["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"],
        description="Ranges excluded from HTTPS egress (cluster and metadata addresses).",
    )
    dns_cidrs: list[str] = Field(
        default=["169.254.20.10/32"],
        description="DNS servers outside kube-dns pods the gateway may query on port 53 "
        "(default: NodeLocal DNSCache's address); add your kube-dns ClusterIP where a node-local "
        "cache answers on it.",
    )
    metadata_server: bool | None = Field(
        default=None,
        description="Egress to the GKE metadata server (metadata_egress), which "
        "application-default credentials (Workload Identity) need; unset: when "
        "settings.google_credentials is adc.",
    )
    metadata_egress: list[str] = Field(
        default=["169.254.169.254/32:80", "169.254.169.252/32:988", "127.0.0.1/32:988"],
        description="CIDR:PORT of the metadata server: 169.254.169.254:80 everywhere, plus the "
        "GKE metadata server's own ports (Dataplane V2 and legacy dataplane).",
    )
    metrics_namespace: str | None = Field(
        default=None,
        description="Namespace of the Prometheus allowed to scrape the gateway; unset: pods with "
        "metrics_pod_labels in any namespace.",
    )
    metrics_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "prometheus"},
        description="Labels of the Prometheus pods allowed to scrape the gateway (kube-prometheus "
        "and the community chart label theirs so; GKE Managed Prometheus: "
        "{app.kubernetes.io/name: collector} in namespace gmp-system).",
    )
    metrics_scrape: bool = Field(
        default=True, description="Let Prometheus (metrics_namespace, metrics_pod_labels) scrape the gateway."
    )

    @field_validator("dns_cidrs")
    @classmethod
    def _dns(cls, value: list[str]) -> list[str]:
        return [_network(item) for item in value]

    @field_validator("metadata_egress")
    @classmethod
    def _metadata(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            match = _PORT_CIDR.match(item.strip())
            if not match or not 1 <= int(match.group("port")) <= 65535:
                raise ValueError(f"{item!r} is not CIDR:PORT, e.g. 169.254.169.254/32:80")
            out.append(f"{_network(match.group('cidr'))}:{int(match.group('port'))}")
        return out

    @model_validator(mode="after")
    def _scrape_is_narrow(self) -> NetworkPolicy:
        if self.metrics_scrape and not self.metrics_namespace and not self.metrics_pod_labels:
            raise ValueError(
                "metrics_scrape with neither metrics_namespace nor metrics_pod_labels would let "
                "every pod of the cluster reach the gateway; name one"
            )
        return self


class Secret(_Strict):
    create: bool = Field(
        default=True,
        description="Render a placeholder Secret; false when sealed-secrets/External Secrets own it.",
    )
    name: str = Field(default="knowctl-secrets", description="Secret holding the gateway's secret settings.")
    fields: list[str] | None = Field(
        default=None,
        description="Secret settings mounted as files (KNOWCTL_<NAME>_FILE); each must be in the Secret. "
        "Unset: the ones the values use (admin_token; google_api_key unless "
        "settings.google_credentials is set; cdn_api_token when settings.cdn_purge_url is). "
        "May also name store_url, upstream_url or cdn_purge_url, to keep a URL with a password "
        "out of the values entirely.",
    )

    @field_validator("fields")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - FILE_FIELDS)
        if unknown:
            raise ValueError(f"not secret settings: {', '.join(unknown)}")
        return list(dict.fromkeys(value))


class Nginx(_Strict):
    image: str = Field(default="nginx:1.27.3-alpine", description="nginx image with a pinned tag.")
    http_port: int = Field(default=80, ge=1, le=65535, description="Host port published for HTTP.")
    https_port: int = Field(default=443, ge=1, le=65535, description="Host port published for HTTPS.")
    tls: bool = Field(default=False, description="Terminate TLS (certificate files under ./tls/).")
    server_name: str = Field(default="_", description="nginx server_name.")
    upstream_servers: list[str] = Field(
        default=["gateway:8080"],
        description="Gateway addresses; the Compose DNS name resolves every replica.",
    )
    cors_allow_origin: str = Field(default="*", description="Access-Control-Allow-Origin value.")
    max_body_size: str = Field(default="10m", description="client_max_body_size (nginx size).")
    listen_host: str = Field(default="", description="Host address the published ports bind (empty: all).")
    dynamic_dns: bool = Field(
        default=True,
        description="Re-resolve upstream names through Docker's DNS (needs nginx 1.27.3+); "
        "false for fixed addresses.",
    )


class Monitoring(_Strict):
    prometheus_image: str = Field(default="prom/prometheus:v2.55.1", description="Prometheus image.")
    grafana_image: str = Field(default="grafana/grafana:11.4.0", description="Grafana image.")
    scrape_interval: str = Field(default="15s", description="Prometheus scrape and rule interval.")
    error_rate_threshold: float = Field(default=0.01, gt=0, lt=1, description="Alert above this 5xx share.")
    quota_usage_threshold: float = Field(default=0.8, gt=0, le=1, description="Alert above this quota share.")
    cache_hit_threshold: float = Field(default=0.8, gt=0, le=1, description="Alert below this hit rate.")
    gateway_targets: list[str] = Field(
        default=[], description="Static scrape targets; empty discovers every replica through DNS."
    )
    alert_for: dict[str, str] = Field(
        default_factory=lambda: dict(ALERT_FOR),
        description="How long each alert's condition must hold before it fires (Prometheus "
        "`for`), by alert name; names left out keep their defaults.",
    )

    @field_validator("scrape_interval")
    @classmethod
    def _interval(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError("must be a Prometheus duration such as 15s")
        return value

    @field_validator("alert_for")
    @classmethod
    def _for(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(ALERT_FOR))
        if unknown:
            raise ValueError(f"no such alert: {', '.join(unknown)} (known: {', '.join(ALERT_FOR)})")
        bad = sorted(name for name, duration in value.items() if not _DURATION.match(str(duration)))
        if bad:
            raise ValueError(f"{', '.join(bad)}: must be a Prometheus duration such as 5m")
        return {**ALERT_FOR, **value}


class Compose(_Strict):
    project: str = Field(default="knowctl", description="Compose project name (container labels use it).")
    subnet: str = Field(
        default="10.57.19.0/24",
        description="IPv4 subnet of the project's network; nginx gets a fixed address in it, the "
        "one address whose X-Forwarded-For the gateway believes. Must not overlap the host's "
        "other networks.",
    )
    nginx: Nginx = Field(default_factory=Nginx, description="The load balancer.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Prometheus and Grafana.")

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        import ipaddress

        try:
            net = ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a subnet such as 10.57.19.0/24: {exc}") from None
        if net.version != 4 or not 16 <= net.prefixlen <= 28:
            raise ValueError("must be an IPv4 subnet from /16 to /28")
        return str(net)


class Values(_Strict):
    """Everything ``knowctl deploy render`` reads. See docs/deploy-*.md."""

    name: str = Field(
        default="knowctl", pattern=r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$", description="Object name."
    )
    namespace: str = Field(
        default="knowctl", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Kubernetes namespace."
    )
    image: Image = Field(default_factory=Image, description="The gateway image.")
    gateway: Gateway = Field(default_factory=Gateway, description="The gateway workload.")
    redis: Redis = Field(default_factory=Redis, description="The bundled Redis.")
    ingress: Ingress = Field(default_factory=Ingress, description="Kubernetes Ingress.")
    network_policy: NetworkPolicy = Field(
        default_factory=NetworkPolicy, description="Kubernetes NetworkPolicies."
    )
    secret: Secret = Field(default_factory=Secret, description="The gateway's secret settings.")
    compose: Compose = Field(default_factory=Compose, description="Compose-only services.")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Gateway settings (names as in knowctl.settings.Settings); secrets are refused.",
    )

    @field_validator("settings")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        leaked = sorted(set(value) & SECRET_FIELDS)
        if leaked:
            raise ValueError(f"{', '.join(leaked)} is a secret: put it in the Secret, never in values")
        unknown = sorted(set(value) - set(Settings.model_fields))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
        return value

    @model_validator(mode="after")
    def _one_source_per_url(self) -> Values:
        both = sorted(set(self.secret.fields or ()) & set(self.settings))
        if both:
            raise ValueError(
                f"{', '.join(both)}: in secret.fields (read from the Secret) and in settings; give one"
            )
        return self


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "values"


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValuesError(f"--set {dotted}: {part} is not a mapping")
        node = child
    node[leaf] = value


def _schema_type(dotted: str) -> Any:
    """The type the schema gives the value at ``dotted`` (``settings.*`` by Settings), or None."""
    import types
    from typing import Union, get_args, get_origin

    annotation: Any = Values
    for part in dotted.split("."):
        if get_origin(annotation) in (Union, types.UnionType):  # X | None: the X
            annotation = next((a for a in get_args(annotation) if a is not type(None)), None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return None
            annotation = Settings if (annotation is Values and part == "settings") else field.annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return None
    return annotation


def _is_text(annotation: Any) -> bool:
    import types
    from typing import Union, get_args, get_origin

    if annotation is str:
        return True
    if get_origin(annotation) is Literal:
        return all(isinstance(arg, str) for arg in get_args(annotation))
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [arg for arg in get_args(annotation) if arg is not type(None)]
        return bool(kinds) and all(_is_text(arg) for arg in kinds)
    return False


def parse_set(items: list[str]) -> dict[str, Any]:
    """``a.b=c`` strings into a nested mapping; values are YAML scalars (5 is an int), except
    where the schema wants a string: there the text is kept as given (``image.tag=1.10``)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            raise ValuesError(f"--set {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ValuesError(f"--set {key}: value is not valid YAML: {exc}") from exc
        if isinstance(value, int | float) and _is_text(_schema_type(key)):  # bool is an int
            value = raw
        _set_path(out, key, value)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_values(values_file: Path | None = None, sets: list[str] | None = None) -> Values:
    """Defaults, then the YAML file, then ``--set`` items; validated as one."""
    import yaml

    data: dict[str, Any] = {}
    if values_file is not None:
        try:
            loaded = yaml.safe_load(values_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValuesError(f"cannot read values file {values_file}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ValuesError(f"values file {values_file} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ValuesError(f"values file {values_file} must hold a mapping")
        data = loaded or {}
    data = _merge(data, parse_set(sets or []))
    try:
        values = Values.model_validate(data)
    except ValidationError as exc:
        raise ValuesError("; ".join(f"{_loc(err['loc'])}: {err['msg']}" for err in exc.errors())) from exc
    # The gateway's own settings are validated by Settings itself (types and validators).
    gateway_settings(values)
    return values


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
            "; ".join(f"settings.{_loc(err['loc'])}: {err['msg']}" for err in exc.errors())
        ) from exc


def secret_files(values: Values, settings: Settings) -> list[str]:
    """The secret settings the pods (containers) read from files: ``secret.fields`` as given,
    else the ones these values use. A KNOWCTL_<NAME>_FILE that cannot be read stops the
    daemon at start, so none is mounted that the operator has no reason to provide."""
    if values.secret.fields is not None:
        return list(values.secret.fields)
    used = ["admin_token"]
    if not settings.google_credentials:  # ADC or a service-account file replaces the key
        used.append("google_api_key")
    if settings.cdn_purge_url:
        used.append("cdn_api_token")
    return sorted(used)


def nginx_bytes(size: str) -> int | None:
    """An nginx size (10m, 512k, 1g, 1024) in bytes, or None if it is not one."""
    match = re.match(r"^(\d+)([kKmMgG]?)$", size.strip())
    if not match:
        return None
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]


def target_problems(values: Values, target: Literal["k8s", "compose"]) -> list[str]:
    """Values that render well-formed files which cannot work together on ``target``."""
    settings = gateway_settings(values, target)
    g = values.gateway
    problems = []
    if "port" in values.settings and settings.port != g.port:
        problems.append(
            f"settings.port ({settings.port}) differs from gateway.port ({g.port}), where the "
            "container port, probes and Service point: set gateway.port only"
        )
    if settings.host in ("127.0.0.1", "localhost", "::1"):
        problems.append(
            f"settings.host ({settings.host}) is loopback: nothing outside the container "
            "(proxy, probes, Prometheus) could connect; leave it unset (0.0.0.0)"
        )
    edge = values.ingress.max_body_size if target == "k8s" else values.compose.nginx.max_body_size
    edge_key = "ingress.max_body_size" if target == "k8s" else "compose.nginx.max_body_size"
    edge_bytes = nginx_bytes(edge)
    if target == "k8s" and not values.ingress.enabled:
        pass  # no edge of ours
    elif edge_bytes is None:
        problems.append(f"{edge_key} ({edge}) is not an nginx size such as 10m")
    elif 0 < edge_bytes < settings.max_body_bytes:
        problems.append(
            f"{edge_key} ({edge}) is below settings.max_body_bytes ({settings.max_body_bytes}): "
            "the proxy would refuse bodies the gateway accepts"
        )
    if target == "k8s":
        fewest = g.autoscaling.min_replicas if g.autoscaling.enabled else g.replicas
        fewest_key = "gateway.autoscaling.min_replicas" if g.autoscaling.enabled else "gateway.replicas"
        if g.min_available >= fewest:
            problems.append(
                f"gateway.min_available ({g.min_available}) is not below {fewest_key} ({fewest}): "
                "the PodDisruptionBudget would let no pod be evicted and block every node drain"
            )
        grace = grace_period(values, settings)
        if grace < g.pre_stop_seconds + settings.drain_timeout:
            problems.append(
                f"the grace period ({grace} s) is below gateway.pre_stop_seconds + "
                f"settings.drain_timeout ({g.pre_stop_seconds} + {settings.drain_timeout:g} s): "
                "pods would be killed mid-drain; raise gateway.extra_grace_seconds"
            )
    return problems


def url_secrets(settings: Settings) -> dict[str, str]:
    """The URL settings of the values that carry credentials: rendered into a Secret (a
    Compose secret file) and read through KNOWCTL_<NAME>_FILE, never into the config."""
    found = {name: getattr(settings, name) for name in sorted(CREDENTIAL_URL_FIELDS)}
    return {
        name: value for name, value in found.items() if isinstance(value, str) and carries_credentials(value)
    }


def config_document(settings: Settings, files: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Every setting that is neither secret nor read from a file (``files``, and any URL with
    credentials), as the YAML config file the daemon reads (KNOWCTL_CONFIG)."""
    dumped = settings.model_dump(mode="json")
    left_out = SECRET_FIELDS | set(files) | set(url_secrets(settings))
    return {name: dumped[name] for name in Settings.model_fields if name not in left_out}
