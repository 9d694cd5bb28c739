"""Compose-only values sections: nginx, Prometheus and Grafana, the project's network."""

from __future__ import annotations

from pydantic import Field, field_validator

from knowctl.deploy.quantities import PROMETHEUS_DURATION
from knowctl.deploy.values.base import StrictSection

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


class Nginx(StrictSection):
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


class Monitoring(StrictSection):
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
        if not PROMETHEUS_DURATION.match(value):
            raise ValueError("must be a Prometheus duration such as 15s")
        return value

    @field_validator("alert_for")
    @classmethod
    def _for(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(ALERT_FOR))
        if unknown:
            raise ValueError(f"no such alert: {', '.join(unknown)} (known: {', '.join(ALERT_FOR)})")
        bad = sorted(name for name, duration in value.items() if not PROMETHEUS_DURATION.match(str(duration)))
        if bad:
            raise ValueError(f"{', '.join(bad)}: must be a Prometheus duration such as 5m")
        return {**ALERT_FOR, **value}


class Compose(StrictSection):
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
