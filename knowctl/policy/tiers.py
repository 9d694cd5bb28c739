"""Service tiers: which of the provider's tiers a call asks for at a deployment.

Gemini API: ``serviceTier`` in a generateContent body (``service_tier`` in an interaction's),
``priority`` for business-critical calls and ``flex`` at a discount, standard when absent;
the answer's ``x-gemini-service-tier`` header says which served (``standard`` when priority
was over its limit: a downgrade). Vertex AI: the ``X-Vertex-AI-LLM-Request-Type`` header
(``dedicated``: Provisioned Throughput only; ``shared``: pay-as-you-go only) and, for shared,
``X-Vertex-AI-LLM-Shared-Request-Type`` (``priority`` or ``flex``). A deployment maps knowctl's
priorities onto them; the mapping applies only where the caller chose no tier itself.

Pure code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson

from knowctl.policy.paths import Family, Surface

TierName = Literal["flex", "standard", "priority", "dedicated", "shared"]
GEMINI_TIERS = ("flex", "standard", "priority")
VERTEX_TIERS = ("flex", "priority", "dedicated", "shared")
SERVED_HEADER = b"x-gemini-service-tier"  # in Gemini API answers: the tier that served
VERTEX_TYPE = "x-vertex-ai-llm-request-type"
VERTEX_SHARED_TYPE = "x-vertex-ai-llm-shared-request-type"
_BODY_FIELDS = {Surface.MODELS: "serviceTier", Surface.INTERACTIONS: "service_tier"}


def caller_tier(family: Family, payload: Mapping[str, Any] | None, headers: Mapping[str, str]) -> str | None:
    """The tier the caller chose itself, if any: the body's on the Gemini API, the
    request-type headers on Vertex (``shared`` with a shared type: that type)."""
    if family is Family.VERTEX:
        kind = headers.get(VERTEX_TYPE, "").strip().lower()
        shared = headers.get(VERTEX_SHARED_TYPE, "").strip().lower()
        return shared or kind or None
    if payload is None:
        return None
    chosen = payload.get("serviceTier", payload.get("service_tier"))
    return chosen.lower() if isinstance(chosen, str) and chosen else None


def vertex_headers(tier: str) -> dict[str, str]:
    """The request-type headers that ask Vertex for ``tier``."""
    if tier in ("dedicated", "shared"):
        return {VERTEX_TYPE: tier}
    return {VERTEX_TYPE: "shared", VERTEX_SHARED_TYPE: tier}


def with_tier(
    family: Family, surface: Surface, body: bytes, headers: Mapping[str, str], tier: str
) -> tuple[bytes, dict[str, str]] | None:
    """The body and the extra headers that ask for ``tier``, or None when the caller chose a
    tier already (or the call is not one a tier applies to): the caller's choice stands."""
    if family is Family.VERTEX:
        if VERTEX_TYPE in headers or VERTEX_SHARED_TYPE in headers:
            return None
        return body, vertex_headers(tier)
    field = _BODY_FIELDS.get(surface)
    if field is None:
        return None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or "serviceTier" in payload or "service_tier" in payload:
        return None
    payload[field] = tier
    return orjson.dumps(payload), {}


def downgraded(asked: str, served: bytes | None) -> bool:
    """Whether an answer served at a lower tier than the priority asked for."""
    return asked == "priority" and served is not None and served.strip().lower() == b"standard"
