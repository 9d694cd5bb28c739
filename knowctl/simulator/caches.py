"""The simulator's context caches (``cachedContents``; docs/wire.md): create, get, list, update
(the expiry only) and delete, on the Gemini API and on Vertex AI, and what a generateContent,
streamGenerateContent or countTokens call that names one (``cachedContent``) is answered.

- Gemini API: ``/{v1,v1beta,v1alpha}/cachedContents[/{id}]``, caches named
  ``cachedContents/{id}``, models ``models/{m}``;
- Vertex AI: ``/{v1,v1beta1}/projects/{p}/locations/{l}/cachedContents[/{id}]``, caches named
  ``projects/{p}/locations/{l}/cachedContents/{id}``, models
  ``projects/{p}/locations/{l}/publishers/google/models/{m}``.

Tokens are the simulator's prompt rule over the cache's ``systemInstruction`` and ``contents``
(:func:`knowctl.simulator.answers.cache_texts`); ``cache_min_tokens`` (default 0) refuses
smaller caches as Google does below its per-model minimum. An unknown or expired cache is,
like Google, a 403 on the Gemini API (which does not tell "absent" from "not yours") and a 404
on Vertex AI.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from knowctl.errors import error_body
from knowctl.net.asgi import (
    Receive,
    Scope,
    Send,
    respond,
)
from knowctl.policy.paths import ApiCall, Family
from knowctl.simulator import answers
from knowctl.simulator.cache_store import DEFAULT_TTL_S, GEMINI_SCOPE, MAX_DISPLAY_NAME, StoredCache
from knowctl.simulator.google_errors import CACHE_DENIED, VERTEX_CACHE_NOT_FOUND, not_found_error
from knowctl.simulator.resources import (
    new_id,
    page,
    page_size,
    parse_duration,
    parse_rfc3339,
    query_params,
    request_body,
)

if TYPE_CHECKING:
    from knowctl.simulator.state import SimulatorState

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
_NAME = r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}"
_ID = r"[^/:]{1,128}"
_GEMINI_PATH = re.compile(rf"/(?P<version>v1|v1beta|v1alpha)/cachedContents(?:/(?P<id>{_ID}))?")
_VERTEX_PATH = re.compile(
    rf"/(?P<version>v1|v1beta1)/(?P<scope>projects/(?P<project>{_NAME})/locations/(?P<location>{_NAME}))"
    rf"/cachedContents(?:/(?P<id>{_ID}))?"
)
_GEMINI_MODEL = re.compile(rf"models/(?P<model>{_NAME})")
_VERTEX_MODEL = re.compile(
    rf"(?:projects/{_NAME}/locations/{_NAME}/)?publishers/google/models/(?P<model>{_NAME})"
)
_GEMINI_CACHE = re.compile(rf"cachedContents/(?P<id>{_ID})")
_VERTEX_CACHE = re.compile(rf"(?P<scope>projects/{_NAME}/locations/{_NAME})/cachedContents/(?P<id>{_ID})")
# What a generation call may not set beside a cache: the cache holds them (Google's words).
_CACHE_CONFLICT = (
    "CachedContent can not be used with GenerateContent request setting system_instruction, tools or "
    "tool_config.\n\nProposed fix: move those values to CachedContent from GenerateContent request."
)
_CONFLICTING = ("systemInstruction", "system_instruction", "tools", "toolConfig", "tool_config")
_UPDATABLE = {"ttl": "ttl", "expireTime": "expireTime", "expire_time": "expireTime"}


@dataclass(frozen=True, slots=True)
class CacheRoute:
    """A cachedContents path: its family, version, scope (Vertex: project and location) and id."""

    family: Family
    version: str
    scope: str
    cache_id: str | None
    project: str | None = None
    location: str | None = None


def route(path: str) -> CacheRoute | None:
    """The cachedContents call ``path`` names, or None (one substring test for every other path)."""
    if "/cachedContents" not in path:
        return None
    if match := _GEMINI_PATH.fullmatch(path):
        return CacheRoute(Family.GEMINI, match["version"], GEMINI_SCOPE, match["id"])
    if match := _VERTEX_PATH.fullmatch(path):
        return CacheRoute(
            Family.VERTEX, match["version"], match["scope"], match["id"], match["project"], match["location"]
        )
    return None


class CacheRefused(Exception):
    """A generation call names a cache that is not there: Google's 403 (Gemini API) or 404 (Vertex)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _missing(family: Family, cache_id: str) -> CacheRefused:
    if family is Family.GEMINI:
        return CacheRefused(403, error_body(403, CACHE_DENIED))
    return CacheRefused(404, error_body(404, VERTEX_CACHE_NOT_FOUND.format(id=cache_id)))


_METHODS = {True: ("GET", "POST"), False: ("GET", "PATCH", "DELETE")}


async def handle(
    state: SimulatorState, where: CacheRoute, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer one cachedContents call."""
    method = scope["method"]
    allowed = _METHODS[where.cache_id is None]
    body = await request_body(scope, receive, send, allowed, state.config.max_body_bytes)
    if body is None:
        return
    now = time.time()
    try:
        if where.cache_id is None:
            if method == "POST":
                await _create(state, where, body, send, now)
            else:
                await _list(state, where, scope, send, now)
            return
        record = state.caches.get(where.scope, where.cache_id, now)
        if record is None:
            state.counters.not_found += 1
            missing = _missing(where.family, where.cache_id)
            await respond(send, missing.status, missing.body)
        elif method == "DELETE":
            state.caches.delete(where.scope, record.id, now)
            state.counters.caches_deleted += 1
            await respond(send, 200, b"{}")
        elif method == "PATCH":
            _update(record, answers.parse_json_object(body or b"{}"), query_params(scope), now)
            state.counters.caches_updated += 1
            await respond(send, 200, orjson.dumps(record.resource()))
        else:
            await respond(send, 200, orjson.dumps(record.resource()))
    except answers.BadRequest as exc:
        state.counters.bad_requests += 1
        await respond(send, 400, error_body(400, str(exc)))


async def _create(state: SimulatorState, where: CacheRoute, body: bytes, send: Send, now: float) -> None:
    request = answers.parse_json_object(body)
    model = request.get("model")
    pattern = _GEMINI_MODEL if where.family is Family.GEMINI else _VERTEX_MODEL
    match = pattern.fullmatch(model) if isinstance(model, str) else None
    if match is None:
        shape = (
            "models/{model}"
            if where.family is Family.GEMINI
            else "projects/{p}/locations/{l}/publishers/google/models/{m}"
        )
        raise answers.BadRequest(f"* CachedContent.model: a model named {shape} is required, not {model!r}")
    assert isinstance(model, str)
    model_id = match["model"]
    if not state.serves(model_id, "generateContent"):
        state.counters.not_found += 1
        call = ApiCall(where.family, where.version, model_id, None, where.project, where.location)
        await respond(send, 404, not_found_error(call, "createCachedContent"))
        return
    prefix = answers.cached_prefix(answers.cache_texts(request))
    minimum = state.config.cache_min_tokens
    if prefix.tokens < minimum:
        raise answers.BadRequest(
            f"Cached content is too small. total_token_count={prefix.tokens}, min_total_token_count={minimum}"
        )
    display_name = request.get("displayName", request.get("display_name"))
    if display_name is not None and (
        not isinstance(display_name, str) or len(display_name) > MAX_DISPLAY_NAME
    ):
        raise answers.BadRequest(f"* CachedContent.display_name: at most {MAX_DISPLAY_NAME} characters")
    expires = _expiry(request, now, default=now + DEFAULT_TTL_S)
    record = StoredCache(
        id=_unused_id(state, where),
        scope=where.scope,
        model=model,
        model_id=model_id,
        prefix=prefix,
        created=now,
        expires=expires,
        display_name=display_name,
    )
    state.caches.put(record)
    state.counters.caches_created += 1
    await respond(send, 200, orjson.dumps(record.resource()))


def _unused_id(state: SimulatorState, where: CacheRoute) -> str:
    """Gemini API caches have short lowercase ids; Vertex AI's are numbers."""
    while True:
        cache_id = new_id() if where.family is Family.GEMINI else str(10**18 + secrets.randbelow(9 * 10**18))
        if not state.caches.has(where.scope, cache_id):
            return cache_id


def _expiry(fields: dict[str, Any], now: float, default: float | None) -> float:
    """When the cache expires, from ``ttl`` or ``expireTime`` (one at most), or ``default``."""
    ttl = fields.get("ttl")
    expire_time = fields.get("expireTime", fields.get("expire_time"))
    if ttl is not None and expire_time is not None:
        raise answers.BadRequest("* CachedContent: only one of ttl and expire_time may be set")
    if ttl is not None:
        return now + parse_duration(ttl, "ttl")
    if expire_time is not None:
        expires = parse_rfc3339(expire_time, "expire_time")
        if expires <= now:
            raise answers.BadRequest("* CachedContent.expire_time: must be in the future")
        return expires
    if default is None:
        raise answers.BadRequest("* CachedContent: ttl or expire_time must be set to update a cache")
    return default


def _update(record: StoredCache, request: dict[str, Any], params: dict[str, str], now: float) -> None:
    """PATCH changes the expiry only; ``updateMask`` (google-genai sends none) may name it."""
    mask = [f.strip() for f in params.get("updateMask", "").split(",") if f.strip()]
    unknown = [f for f in mask if f not in _UPDATABLE]
    if unknown:
        raise answers.BadRequest(f"Only ttl and expire_time can be updated, not {', '.join(unknown)}")
    fixed = sorted(k for k in request if k not in _UPDATABLE and k != "name")
    if fixed:
        raise answers.BadRequest(f"Only ttl and expire_time can be updated, not {', '.join(fixed)}")
    fields = {k: v for k, v in request.items() if k in _UPDATABLE and (not mask or k in mask)}
    record.expires = _expiry(fields, now, default=None)
    record.updated = now


async def _list(state: SimulatorState, where: CacheRoute, scope: Scope, send: Send, now: float) -> None:
    params = query_params(scope)
    size = page_size(params, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    items = state.caches.newest_first(where.scope, now)
    chosen, token = page(items, lambda c: c.seq, size, params.get("pageToken"))
    out: dict[str, Any] = {}
    if chosen:
        out["cachedContents"] = [c.resource() for c in chosen]
    if token is not None:
        out["nextPageToken"] = token
    await respond(send, 200, orjson.dumps(out))


def cached_prefix(
    state: SimulatorState, call: ApiCall, model: str, request: dict[str, Any]
) -> answers.CachedPrefix | None:
    """The cache a generateContent / countTokens request names in ``cachedContent``, if any.

    Raises :class:`CacheRefused` when it is unknown or expired, and :class:`answers.BadRequest`
    when it serves another model or the request also sets what the cache holds (Google's 400s)."""
    name = request.get("cachedContent", request.get("cached_content"))
    if name is None:
        return None
    if not isinstance(name, str):
        raise answers.BadRequest("* GenerateContentRequest.cached_content: must be a cachedContents name")
    if call.family is Family.GEMINI:
        match = _GEMINI_CACHE.fullmatch(name)
        scope, cache_id = (GEMINI_SCOPE, match["id"]) if match else ("", name)
    else:  # Vertex express has no project and so no caches: every name is unknown there
        match = _VERTEX_CACHE.fullmatch(name) if call.family is Family.VERTEX else None
        scope, cache_id = (match["scope"], match["id"]) if match else ("-", name)
    record = state.caches.get(scope, cache_id, time.time()) if match else None
    if record is None:
        raise _missing(call.family, cache_id)
    if record.model_id != model:
        named = f"models/{model}" if call.family is Family.GEMINI else model
        raise answers.BadRequest(
            f"Model used by GenerateContent request ({named}) and CachedContent ({record.model}) "
            "has to be the same."
        )
    if any(request.get(key) is not None for key in _CONFLICTING):
        raise answers.BadRequest(_CACHE_CONFLICT)
    return record.prefix
