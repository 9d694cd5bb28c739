"""Which Gemini / Vertex AI REST call a request path names, and where Google serves it.

Three families of paths reach the gateway (see GEMINI_WIRE.md):

- Gemini API: ``/{v1,v1beta,v1alpha}/models/{model}:{action}``
- Vertex AI: ``/{v1,v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{model}:{action}``
- Vertex express: ``/{v1,v1beta1}/publishers/google/models/{model}:{action}``

``GET`` on the model collections (and on one model) is a listing, forwarded as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Family(StrEnum):
    GEMINI = "gemini"
    VERTEX = "vertex"
    EXPRESS = "express"


class Action(StrEnum):
    """Actions whose bodies the gateway reads; the others it knows are forwarded as they are."""

    GENERATE = "generateContent"
    STREAM = "streamGenerateContent"
    COUNT_TOKENS = "countTokens"


_ACTIONS: dict[str, Action] = {a.value: a for a in Action}
_GENERATING = frozenset({Action.GENERATE.value, Action.STREAM.value})

# Every model action the official SDKs send (google-genai's models.py and batches.py):
# forwarded in keys mode, where the gateway pays; anything else is a 404 there. All of them
# count against the caller's limits; all but the free token counts spend provider quota.
KNOWN_ACTIONS = (
    "generateContent",
    "streamGenerateContent",
    "countTokens",
    "computeTokens",
    "embedContent",
    "batchEmbedContents",
    "asyncBatchEmbedContent",
    "batchGenerateContent",
    "predict",
    "predictLongRunning",
    "fetchPredictOperation",
)
_FREE_ACTIONS = frozenset({"countTokens", "computeTokens", "fetchPredictOperation"})

_NAME = r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}"
_MODEL = rf"(?P<model>{_NAME})(?::(?P<action>[A-Za-z]{{1,64}}))?"
_PATTERNS: tuple[tuple[Family, re.Pattern[str]], ...] = (
    (Family.GEMINI, re.compile(rf"/(?P<version>v1|v1beta|v1alpha)/models(?:/{_MODEL})?")),
    (
        Family.VERTEX,
        re.compile(
            rf"/(?P<version>v1|v1beta1)/projects/(?P<project>{_NAME})/locations/(?P<location>{_NAME})"
            rf"/publishers/google/models(?:/{_MODEL})?"
        ),
    ),
    (Family.EXPRESS, re.compile(rf"/(?P<version>v1|v1beta1)/publishers/google/models(?:/{_MODEL})?")),
)

GEMINI_HOST = "https://generativelanguage.googleapis.com"
VERTEX_GLOBAL_HOST = "https://aiplatform.googleapis.com"


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One parsed request path. ``model`` is None for a collection listing."""

    family: Family
    version: str
    model: str | None
    action: str | None
    project: str | None = None
    location: str | None = None

    @property
    def known_action(self) -> Action | None:
        # A dict lookup: calling the enum costs a microsecond per request, on every call.
        return _ACTIONS.get(self.action) if self.action is not None else None

    @property
    def generates(self) -> bool:
        """A call that spends generation quota and whose answer may be cached."""
        return self.action in _GENERATING

    @property
    def spends_quota(self) -> bool:
        """A model action the provider counts against its quota (listings and token counts
        are free)."""
        return self.action is not None and self.action not in _FREE_ACTIONS


def parse_path(path: str) -> ApiCall | None:
    """The API call named by ``path`` (without query string), or None if it is not one."""
    for family, pattern in _PATTERNS:
        match = pattern.fullmatch(path)
        if match is not None:
            groups = match.groupdict()
            return ApiCall(
                family=family,
                version=groups["version"],
                model=groups.get("model"),
                action=groups.get("action"),
                project=groups.get("project"),
                location=groups.get("location"),
            )
    return None


def allowed_methods(call: ApiCall) -> tuple[str, ...]:
    """Model actions are POSTs; a model or a collection is read with GET."""
    return ("POST",) if call.action is not None else ("GET",)


def google_origin(call: ApiCall) -> str:
    """Google's own host for the family: where the call goes when no upstream is configured."""
    if call.family is Family.GEMINI:
        return GEMINI_HOST
    if call.family is Family.VERTEX and call.location and call.location != "global":
        return f"https://{call.location}-aiplatform.googleapis.com"
    return VERTEX_GLOBAL_HOST
