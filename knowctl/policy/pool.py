"""The pool of upstream deployments: which deployments may serve a call, in which order, with
which quota windows, and where exactly the call goes at each.

A deployment is one place that holds provider quota: a Gemini API key's project, or one Vertex
project in one location. Quotas are per project (Gemini API) or per project, location and
model (Vertex), so a team with several keys, projects or regions owns several quotas; the
gateway admits each call at whichever deployment has room (docs/architecture.md, "Upstream
deployments").

Without deployments configured the pool holds one, ``default``, that serves every family at
the address the caller used (today's single upstream): its windows are the quota settings'
own and its quota scope the model's, so nothing about it changes.

Pure code: the daemon picks among the candidates through the store and sends the call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from knowctl.policy.paths import GEMINI_HOST, ApiCall, Family, Surface, google_origin, vertex_host
from knowctl.policy.priority import Priority
from knowctl.policy.quota import RPD, RPM, TPD, TPM, Limits, QuotaConfig
from knowctl.policy.windows import Window

DEFAULT = "default"
# The calls whose bodies and answers the two families share: they may cross (opt-in).
CROSS_ACTIONS = frozenset({"generateContent", "streamGenerateContent", "countTokens"})
# Body fields one family has and the other refuses: dropped when a call crosses to it.
_ONLY_VERTEX = ("labels",)
MEMO_LIMIT = 4096

# The Vertex project form of a path: its project and location are the deployment's.
_VERTEX_PREFIX = re.compile(r"^/(v1|v1beta1)/projects/[^/]+/locations/[^/]+/")
# The model segment of a models-surface path, renamed where the deployment knows it otherwise.
_MODEL_SEGMENT = re.compile(r"/models/([^/:]+)(?=:|$)")


@dataclass(frozen=True, slots=True)
class Served:
    """One model a deployment serves: its name there, and the limits it holds there."""

    upstream: str
    limits: Limits = field(default_factory=Limits)
    tiers: Mapping[str, Limits] = field(default_factory=dict)  # limits kept apart per service tier


@dataclass(frozen=True, slots=True)
class Deployment:
    """One upstream deployment (see the module doc)."""

    name: str
    # The API family it speaks; None only for the pool of one, which serves each as addressed.
    family: Family | None = None
    order: int = 0  # preference: lower first (e.g. Provisioned Throughput 0, pay-as-you-go 1)
    models: Mapping[str, Served] | None = None  # None: every model, no declared limits
    base_url: str | None = None  # None: Google's own host for the family and location
    project: str | None = None  # Vertex
    location: str | None = None  # Vertex
    tiers: Mapping[Priority, str] = field(default_factory=dict)  # knowctl priority -> provider tier
    # Where the learned capacity of a model it declares no limit for starts (requests per
    # minute window); None: not learned, such a model is held only after the provider's 429s.
    learn_from: int | None = None
    proxy: str | None = None  # the HTTP proxy its calls go through (else HTTPS_PROXY / HTTP_PROXY)
    # It may serve calls addressed to the other family (CROSS_ACTIONS only): ``upstreams_cross_family``.
    cross_family: bool = False

    @property
    def legacy(self) -> bool:
        """The pool of one made from the single-upstream settings."""
        return self.family is None

    def serves(self, call: ApiCall) -> bool:
        if self.family is not None and _family(call) is not self.family and not self._crosses(call):
            return False
        return self.models is None or call.model is None or call.model in self.models

    def _crosses(self, call: ApiCall) -> bool:
        return (
            self.cross_family
            and call.surface is Surface.MODELS
            and call.model is not None
            and call.action in CROSS_ACTIONS
        )

    def bridged(self, call: ApiCall) -> bool:
        """Whether ``call`` was addressed to the other family than this deployment's."""
        return self.family is not None and _family(call) is not self.family

    def as_sent(self, call: ApiCall) -> ApiCall:
        """``call`` as this deployment receives it: in its own family when it crosses (what
        its credentials and host are chosen by)."""
        if not self.bridged(call):
            return call
        vertex = self.family is Family.VERTEX
        return ApiCall(
            family=Family.VERTEX if vertex else Family.GEMINI,
            version="v1" if vertex else "v1beta",
            model=self.upstream_model(call.model or ""),
            action=call.action,
            project=self.project if vertex else None,
            location=(self.location or "global") if vertex else None,
        )

    def bridge_body(self, call: ApiCall, payload: dict[str, Any] | None) -> dict[str, Any] | None:
        """The body as the other family takes it, when ``call`` crosses and it differs; None
        when it goes as it is. Vertex wants every content's ``role`` (the Gemini API assumes
        ``user``); the Gemini API refuses Vertex's ``labels``."""
        if payload is None or not self.bridged(call):
            return None
        if self.family is Family.VERTEX:
            contents = payload.get("contents")
            if isinstance(contents, list) and any(isinstance(c, dict) and "role" not in c for c in contents):
                filled = [{"role": "user", **c} if isinstance(c, dict) else c for c in contents]
                return {**payload, "contents": filled}
            return None
        dropped = {k: v for k, v in payload.items() if k not in _ONLY_VERTEX}
        return dropped if len(dropped) != len(payload) else None

    def upstream_model(self, model: str) -> str:
        served = self.models.get(model) if self.models is not None else None
        return served.upstream if served is not None else model

    def origin(self, call: ApiCall) -> str:
        """Scheme, host and port (plus a base path) the call goes to at this deployment."""
        if self.base_url is not None:
            return self.base_url
        if self.family is None:
            return google_origin(call)
        return GEMINI_HOST if self.family is Family.GEMINI else vertex_host(self.location)

    def target_path(self, call: ApiCall, raw_path: str) -> str:
        """The path as this deployment must see it: its own project and location, and the
        model under its name there (models surface; elsewhere the model is in the body); a
        call that crosses families gets the path of this deployment's."""
        if self.bridged(call):
            sent = self.as_sent(call)
            if sent.family is Family.VERTEX:
                return (
                    f"/{sent.version}/projects/{sent.project}/locations/{sent.location}"
                    f"/publishers/google/models/{sent.model}:{sent.action}"
                )
            return f"/{sent.version}/models/{sent.model}:{sent.action}"
        path = raw_path
        if self.project is not None and call.family is Family.VERTEX:
            location = self.location or "global"
            path = _VERTEX_PREFIX.sub(rf"/\1/projects/{self.project}/locations/{location}/", path, count=1)
        if call.model is not None and call.surface is Surface.MODELS and self.models is not None:
            upstream = self.upstream_model(call.model)
            if upstream != call.model:
                path = _MODEL_SEGMENT.sub(f"/models/{upstream}", path, count=1)
        return path


def _family(call: ApiCall) -> Family:
    # Vertex express (an API key, no project) is Vertex quota all the same.
    return Family.VERTEX if call.family is Family.EXPRESS else call.family


class Pool:
    """The deployments, in the order configured, and the quota windows of each model at each."""

    def __init__(self, deployments: Sequence[Deployment], quota: QuotaConfig) -> None:
        if not deployments:
            raise ValueError("a pool holds at least one deployment")
        names = [d.name for d in deployments]
        if len(set(names)) != len(names):
            raise ValueError(f"deployment names must be unique: {names}")
        self.deployments = tuple(deployments)
        self._quota = quota
        self._by_name = {d.name: d for d in deployments}
        self.single = len(self.deployments) == 1 and self.deployments[0].legacy
        # Per family and model: asked on every call, and the answer never changes.
        self._candidates: dict[tuple[Family, str | None], tuple[Deployment, ...]] = {}

    def get(self, name: str) -> Deployment | None:
        return self._by_name.get(name)

    def candidates(self, call: ApiCall) -> tuple[Deployment, ...]:
        """The deployments that may serve ``call``, by preference order (ties as configured)."""
        if self.single:
            return self.deployments
        key = (call.family, call.model)
        found = self._candidates.get(key)
        if found is None:
            found = tuple(sorted((d for d in self.deployments if d.serves(call)), key=lambda d: d.order))
            if len(self._candidates) < MEMO_LIMIT:  # model names come from callers: bounded
                self._candidates[key] = found
        return found

    def first(self, call: ApiCall) -> Deployment | None:
        """Where a call that spends no quota goes (a listing, a token count): the most
        preferred deployment that serves it."""
        found = self.candidates(call)
        return found[0] if found else None

    def learned_window(self, limit: int) -> Window:
        """The request window a learned capacity is enforced by."""
        return Window(RPM, self._quota.minute_s, limit)

    @property
    def minute_s(self) -> float:
        return self._quota.minute_s

    def windows(self, deployment: Deployment, model: str, tier: str | None = None) -> tuple[Window, ...]:
        """``model``'s quota windows at ``deployment`` (for ``tier``, where the deployment keeps
        its limits apart), in the order rpm, rpd, tpm, tpd; () when it declares no limit
        (then only the provider's 429s tell)."""
        if deployment.legacy:
            return self._quota.windows(model)
        served = deployment.models.get(model) if deployment.models is not None else None
        if served is None:
            return ()
        lim = served.limits if tier is None else served.tiers.get(tier, Limits())
        q = self._quota
        out: list[Window] = []
        for name, limit in ((RPM, lim.rpm), (RPD, lim.rpd), (TPM, lim.tpm), (TPD, lim.tpd)):
            if limit is not None:
                long = name in (RPD, TPD)
                out.append(Window(name, q.day_s if long else q.minute_s, limit, q.day_tz if long else None))
        return tuple(out)
