"""Cross-field checks on values: what renders well-formed files that cannot work on a target."""

from __future__ import annotations

from typing import Literal

from knowctl.deploy.quantities import nginx_bytes
from knowctl.deploy.values.derived import gateway_settings, grace_period
from knowctl.deploy.values.schema import Values


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
