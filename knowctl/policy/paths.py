"""Which Gemini / Vertex AI REST call a request path names, and where Google serves it.

Three families of paths reach the gateway (see GEMINI_WIRE.md):

- Gemini API: ``/{v1,v1beta,v1alpha}/models/{model}:{action}``
- Vertex AI: ``/{v1,v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{model}:{action}``
- Vertex express: ``/{v1,v1beta1}/publishers/google/models/{model}:{action}``

``GET`` on the model collections (and on one model) is a listing, forwarded as it is.

Two more surfaces spend quota (docs/wire.md):

- Interactions: ``/{v1,v1beta,v1alpha}/interactions[/{id}[/cancel]]`` (Gemini API),
  ``/v1beta1/interactions...`` (Vertex express) and
  ``/{v1,v1beta1}/projects/{p}/locations/{l}/interactions...`` (Vertex);
- OpenAI-compatible: ``/{v1beta,v1}/openai/{chat/completions,embeddings,models[/{model}]}``.

Their model is named in the body, not the path: the handler sets it once the body is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Family(StrEnum):
    GEMINI = "gemini"
    VERTEX = "vertex"
    EXPRESS = "express"


class Surface(StrEnum):
    """Which API a path belongs to: its bodies, answers and errors have their own shapes."""

    MODELS = "models"
    INTERACTIONS = "interactions"
    OPENAI = "openai"
    FILES = "files"  # the Gemini API's Files: resumable uploads, listing, reading, deleting
    CACHES = "cachedContents"  # context caches: created, read, listed, updated, deleted
    BATCHES = "batches"  # batch jobs (Vertex: batchPredictionJobs): read, listed, cancelled, deleted
    OPERATIONS = "operations"  # long-running operations (a video's): polled
    LIVE = "live"  # the Live API's WebSocket (BidiGenerateContent); the model comes in its setup


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
# Vertex's action for embedding (and image) models: a batch of ``instances``.
PREDICT = "predict"
# Embedding actions whose items the gateway caches one by one.
EMBED_ACTIONS = frozenset({"embedContent", "batchEmbedContents"})
# What the OpenAI-compatible endpoint serves (``resource`` of an OPENAI call).
OPENAI_CHAT = "chat/completions"
OPENAI_EMBEDDINGS = "embeddings"
OPENAI_MODELS = "models"
CANCEL = "cancel"

_NAME = r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}"
_MODEL = rf"(?P<model>{_NAME})(?::(?P<action>[A-Za-z]{{1,64}}))?"
# What every Vertex AI path of one project and location starts with.
_VERTEX_PROJECT = rf"/(?P<version>v1|v1beta1)/projects/(?P<project>{_NAME})/locations/(?P<location>{_NAME})"
_PATTERNS: tuple[tuple[Family, re.Pattern[str]], ...] = (
    (
        Family.GEMINI,
        re.compile(rf"/(?P<version>v1|v1beta|v1alpha)/models(?:/{_MODEL})?"),
    ),
    (
        Family.VERTEX,
        re.compile(rf"{_VERTEX_PROJECT}/publishers/google/models(?:/{_MODEL})?"),
    ),
    (
        Family.EXPRESS,
        re.compile(rf"/(?P<version>v1|v1beta1)/publishers/google/models(?:/{_MODEL})?"),
    ),
)

_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}"
_INTERACTIONS = rf"/interactions(?:/(?P<resource>{_ID})(?:/(?P<action>cancel))?)?"
_INTERACTION_PATTERNS: tuple[tuple[Family, re.Pattern[str]], ...] = (
    (Family.GEMINI, re.compile(rf"/(?P<version>v1|v1beta|v1alpha){_INTERACTIONS}")),
    (
        Family.VERTEX,
        re.compile(_VERTEX_PROJECT + _INTERACTIONS),
    ),
    (Family.EXPRESS, re.compile(rf"/(?P<version>v1beta1){_INTERACTIONS}")),
)
_OPENAI = re.compile(
    rf"/(?P<version>v1beta|v1)/openai/(?:(?P<resource>chat/completions|embeddings)"
    rf"|(?P<models>models)(?:/(?:models/)?(?P<model>{_NAME}))?)"
)

# Vertex AI's OpenAI-compatible endpoint: chat completions and embeddings of one project and
# location (its models are named "google/{model}").
_VERTEX_OPENAI = re.compile(rf"{_VERTEX_PROJECT}/endpoints/openapi/(?P<resource>chat/completions|embeddings)")

# The Gemini API's Files: ``resource`` is "files/{id}", ``action`` "upload" (a resumable upload's
# start and its chunks, told apart by X-Goog-Upload-Command) or "download".
_FILE_ID = r"[a-z0-9][a-z0-9-]{0,63}"
_FILES = re.compile(
    rf"/(?:(?P<upload>upload)/|(?P<download>download)/)?(?P<version>v1|v1beta|v1alpha)/files"
    rf"(?:/(?P<id>{_FILE_ID})(?P<action>:download)?)?"
)
FILE_UPLOAD = "upload"
FILE_DOWNLOAD = "download"
# Context caches, on the Gemini API and Vertex (one project and location): ``resource`` is
# "cachedContents/{id}", the part of the name both families share.
_CACHES = rf"/cachedContents(?:/(?P<id>{_FILE_ID}))?"
_CACHE_PATTERNS: tuple[tuple[Family, re.Pattern[str]], ...] = (
    (Family.GEMINI, re.compile(rf"/(?P<version>v1|v1beta|v1alpha){_CACHES}")),
    (Family.VERTEX, re.compile(_VERTEX_PROJECT + _CACHES)),
)
# Batch jobs: the Gemini API's batches, Vertex's batchPredictionJobs (of one project and
# location). ``resource`` is "batches/{id}" or "batchPredictionJobs/{id}", ``action`` "cancel".
_BATCH_ID = r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}"
_BATCH_PATTERNS: tuple[tuple[Family, re.Pattern[str]], ...] = (
    (
        Family.GEMINI,
        re.compile(
            rf"/(?P<version>v1|v1beta|v1alpha)/(?P<kind>batches)(?:/(?P<id>{_BATCH_ID})(?::(?P<action>cancel))?)?"
        ),
    ),
    (
        Family.VERTEX,
        re.compile(
            _VERTEX_PROJECT
            + rf"/(?P<kind>batchPredictionJobs)(?:/(?P<id>{_BATCH_ID})(?::(?P<action>cancel))?)?"
        ),
    ),
)
# A long-running operation, polled by its name: models/{m}/operations/{id} or operations/{id}
# (Vertex: under a project, location and publisher model). ``resource`` is "operations/{id}".
_OPERATION = rf"(?:/models/{_NAME}|/publishers/google/models/{_NAME})?/operations/(?P<id>{_BATCH_ID})"
_OPERATION_PATTERNS: tuple[tuple[Family, re.Pattern[str]], ...] = (
    (Family.GEMINI, re.compile(rf"/(?P<version>v1|v1beta|v1alpha){_OPERATION}")),
    (Family.VERTEX, re.compile(_VERTEX_PROJECT + _OPERATION)),
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
    surface: Surface = Surface.MODELS
    # An interaction's id, or what an OPENAI call names (chat/completions, embeddings, models).
    resource: str | None = None

    @property
    def known_action(self) -> Action | None:
        # A dict lookup: calling the enum costs a microsecond per request, on every call.
        return _ACTIONS.get(self.action) if self.action is not None else None

    @property
    def generates(self) -> bool:
        """A call that spends generation quota and whose answer may be cached: generateContent,
        creating an interaction, an OpenAI chat completion."""
        if self.surface is Surface.MODELS:
            return self.action in _GENERATING
        if self.surface is Surface.INTERACTIONS:
            return self.resource is None
        return self.resource == OPENAI_CHAT

    @property
    def embeds(self) -> bool:
        """An embedding call, whose items are cached one by one."""
        if self.surface is Surface.MODELS:
            return self.action in EMBED_ACTIONS
        return self.surface is Surface.OPENAI and self.resource == OPENAI_EMBEDDINGS

    @property
    def spends_quota(self) -> bool:
        """A model action the provider counts against its quota (listings and token counts
        are free)."""
        if self.surface is not Surface.MODELS:
            return self.generates or self.embeds
        return self.action is not None and self.action not in _FREE_ACTIONS

    @property
    def route(self) -> str:
        """The metrics label of the call's kind (actions beyond the known ones aside)."""
        if self.surface is Surface.INTERACTIONS:
            if self.resource is None:
                return "interactions.create"
            return "interactions.cancel" if self.action == CANCEL else "interactions.get"
        if self.surface is Surface.OPENAI:
            return f"openai.{(self.resource or OPENAI_MODELS).replace('/', '.')}"
        if self.surface is Surface.FILES:
            return f"files.{self.action or ('item' if self.resource else 'list')}"
        if self.surface is Surface.CACHES:
            return "caches.item" if self.resource else "caches.collection"
        if self.surface is Surface.BATCHES:
            return f"batches.{self.action or ('item' if self.resource else 'collection')}"
        if self.surface is Surface.OPERATIONS:
            return "operations.get"
        if self.surface is Surface.LIVE:
            return "live"
        return self.action or "list_models"


def parse_path(path: str) -> ApiCall | None:
    """The API call named by ``path`` (without query string), or None if it is not one."""
    if "/interactions" in path and (found := _parse_interaction(path)) is not None:
        return found
    if ("/openai/" in path or "/openapi/" in path) and (found := _parse_openai(path)) is not None:
        return found
    if "/files" in path and (found := _parse_files(path)) is not None:
        return found
    for marker, patterns, surface, collection in _OWNED:
        if marker in path and (found := _parse_owned(path, patterns, surface, collection)) is not None:
            return found
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


def _parse_interaction(path: str) -> ApiCall | None:
    for family, pattern in _INTERACTION_PATTERNS:
        match = pattern.fullmatch(path)
        if match is not None:
            groups = match.groupdict()
            return ApiCall(
                family=family,
                version=groups["version"],
                model=None,
                action=groups.get("action"),
                project=groups.get("project"),
                location=groups.get("location"),
                surface=Surface.INTERACTIONS,
                resource=groups.get("resource"),
            )
    return None


def _parse_files(path: str) -> ApiCall | None:
    match = _FILES.fullmatch(path)
    if match is None:
        return None
    upload, download, name = match["upload"], match["download"], match["id"]
    if upload is not None and name is not None:
        return None  # uploads go to the collection
    if download is not None and match["action"] is None:
        return None  # /download/ is for :download alone (the SDK sends it without the prefix too)
    return ApiCall(
        family=Family.GEMINI,
        version=match["version"],
        model=None,
        action=FILE_UPLOAD if upload else FILE_DOWNLOAD if match["action"] else None,
        surface=Surface.FILES,
        resource=f"files/{name}" if name is not None else None,
    )


def _parse_owned(
    path: str, patterns: tuple[tuple[Family, re.Pattern[str]], ...], surface: Surface, collection: str
) -> ApiCall | None:
    """A call on caches, batches or operations: ``resource`` is "{collection}/{id}" (the
    pattern's ``kind`` group names the collection where it has one), None for the collection."""
    for family, pattern in patterns:
        match = pattern.fullmatch(path)
        if match is not None:
            groups = match.groupdict()
            return ApiCall(
                family=family,
                version=groups["version"],
                model=None,
                action=groups.get("action"),
                project=groups.get("project"),
                location=groups.get("location"),
                surface=surface,
                resource=f"{groups.get('kind') or collection}/{groups['id']}" if groups.get("id") else None,
            )
    return None


# The owned collections' paths: a marker a path must hold, its patterns, surface, collection.
_OWNED = (
    ("/cachedContents", _CACHE_PATTERNS, Surface.CACHES, "cachedContents"),
    ("/batch", _BATCH_PATTERNS, Surface.BATCHES, "batches"),
    ("/operations/", _OPERATION_PATTERNS, Surface.OPERATIONS, "operations"),
)

# The Live API's WebSocket paths, as google-genai's live.py connects: the Gemini API's (and the
# Constrained form an ephemeral token uses), and Vertex AI's.
_LIVE = re.compile(
    r"/ws/google\.(?:ai\.generativelanguage\.(?P<gemini>v1|v1beta|v1alpha)\.GenerativeService\."
    r"(?P<method>BidiGenerateContent(?:Constrained)?)"
    r"|cloud\.aiplatform\.(?P<vertex>v1|v1beta1)\.LlmBidiService/BidiGenerateContent)"
)
LIVE_METHOD = "BidiGenerateContent"


def parse_live_path(path: str) -> ApiCall | None:
    """The Live API session a WebSocket path opens (its model unknown until the setup), or None."""
    match = _LIVE.fullmatch(path)
    if match is None:
        return None
    if match["gemini"] is not None:
        return ApiCall(Family.GEMINI, match["gemini"], None, match["method"], surface=Surface.LIVE)
    return ApiCall(Family.VERTEX, match["vertex"], None, LIVE_METHOD, surface=Surface.LIVE)


def live_model(family: Family, named: str) -> tuple[str, str | None, str | None] | None:
    """The model a Live setup names ("models/m", Vertex's "projects/p/locations/l/publishers/
    google/models/m"), with Vertex's project and location, or None if it names none."""
    if family is Family.VERTEX:
        found = re.fullmatch(
            rf"projects/({_NAME})/locations/({_NAME})/publishers/google/models/({_NAME})", named
        )
        return (found[3], found[1], found[2]) if found else None
    found = re.fullmatch(rf"(?:models/)?({_NAME})", named)
    return (found[1], None, None) if found else None


def owned_name(name: str) -> str:
    """What the gateway records a resource's owner under: the last two parts of its name
    ("files/abc", "cachedContents/x", "batches/b", "operations/o" of models/m/operations/o),
    the part every spelling of it (Gemini's, Vertex's with a project number) shares."""
    return "/".join(name.rsplit("/", 2)[-2:])


def _parse_openai(path: str) -> ApiCall | None:
    match = _OPENAI.fullmatch(path)
    if match is None:
        vertex = _VERTEX_OPENAI.fullmatch(path)
        if vertex is None:
            return None
        return ApiCall(
            family=Family.VERTEX,
            version=vertex["version"],
            model=None,
            action=None,
            project=vertex["project"],
            location=vertex["location"],
            surface=Surface.OPENAI,
            resource=vertex["resource"],
        )
    return ApiCall(
        family=Family.GEMINI,
        version=match["version"],
        model=match["model"],
        action=None,
        surface=Surface.OPENAI,
        resource=match["resource"] or OPENAI_MODELS,
    )


def allowed_methods(call: ApiCall) -> tuple[str, ...]:
    """Model actions are POSTs; a model or a collection is read with GET. An interaction is
    read or deleted, created or cancelled with POST."""
    if call.surface is Surface.INTERACTIONS:
        return ("GET", "DELETE") if call.resource is not None and call.action is None else ("POST",)
    if call.surface is Surface.OPENAI:
        return ("GET",) if call.resource == OPENAI_MODELS else ("POST",)
    if call.surface is Surface.CACHES:
        return ("GET", "PATCH", "DELETE") if call.resource is not None else ("GET", "POST")
    if call.surface is Surface.BATCHES:
        if call.action is not None:
            return ("POST",)
        # Vertex creates a batch job by POST to its collection; Gemini by a model action.
        return ("GET", "DELETE") if call.resource is not None else ("GET", "POST")
    if call.surface is Surface.OPERATIONS:
        return ("GET",)
    if call.surface is Surface.FILES:
        if call.action == FILE_UPLOAD:
            return ("POST",)
        return ("GET", "DELETE") if call.resource is not None and call.action is None else ("GET",)
    return ("POST",) if call.action is not None else ("GET",)


def google_origin(call: ApiCall) -> str:
    """Google's own host for the family: where the call goes when no upstream is configured."""
    if call.family is Family.GEMINI:
        return GEMINI_HOST
    return vertex_host(call.location if call.family is Family.VERTEX else None)


def vertex_host(location: str | None) -> str:
    """Vertex AI's host for ``location`` (the global endpoint for ``global`` or none)."""
    if location and location != "global":
        return f"https://{location}-aiplatform.googleapis.com"
    return VERTEX_GLOBAL_HOST
