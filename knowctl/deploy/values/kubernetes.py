"""Kubernetes-only values sections: the Ingress and the NetworkPolicies."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from knowctl.deploy.values.base import StrictSection

_PORT_CIDR = re.compile(r"^(?P<cidr>[0-9a-fA-F.:]+(/\d+)?):(?P<port>\d{1,5})$")


class Ingress(StrictSection):
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


class NetworkPolicy(StrictSection):
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
