"""Values sections of the two workloads, the gateway and its Redis: image, resources, autoscaling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from knowctl import __version__
from knowctl.deploy.quantities import (
    CPU_QUANTITY,
    MEMORY_QUANTITY,
    cpu_cores,
    maxmemory_problem,
    memory_bytes,
    redis_bytes,
)
from knowctl.deploy.values.base import StrictSection


class Resources(StrictSection):
    """Kubernetes-style quantities; Compose gets the same numbers converted."""

    cpu_request: str = Field(default="250m", description="CPU request (Kubernetes quantity, e.g. 250m).")
    memory_request: str = Field(default="256Mi", description="Memory request (Ki/Mi/Gi/Ti).")
    cpu_limit: str = Field(default="1", description="CPU limit.")
    memory_limit: str = Field(default="512Mi", description="Memory limit.")

    @field_validator("cpu_request", "cpu_limit")
    @classmethod
    def _cpu(cls, value: str) -> str:
        if not CPU_QUANTITY.match(value):
            raise ValueError("must be a CPU quantity such as 250m or 1.5")
        return value

    @field_validator("memory_request", "memory_limit")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not MEMORY_QUANTITY.match(value):
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


class Image(StrictSection):
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


class Autoscaling(StrictSection):
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


class Gateway(StrictSection):
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


class Redis(StrictSection):
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
        if not MEMORY_QUANTITY.match(value):
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
