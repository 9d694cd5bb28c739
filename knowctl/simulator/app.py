"""``SimulatorApp``: a Gemini-compatible upstream for development, tests and benchmarks.

A raw ASGI callable rather than a framework app: it is the baseline the gateway's benchmarks
are measured against, so the hot path is one ``parse_path``, one orjson parse and one dump.
All state lives in the instance (counters, quota log, pending faults), so the gateway's
``--simulate`` mode can mount one in-process; it needs no lifespan events.

Control endpoints (not part of Google's API):

- ``GET /_simulator/stats``: counters (see :meth:`SimulatorApp.stats_json`).
- ``POST /_simulator/reset``: zero counters and the quota log, drop pending faults.
- ``GET|POST /_simulator/config``: read or change ``latency_ms``, ``chunk_delay_ms``, ``chunks``,
  ``rpm``, ``tpm``, ``window_s``, ``models`` (the models it serves and lists) and ``any_model``;
  ``{"fault": KIND, "count": N}`` makes the next N generate/stream calls fail as KIND (see
  :data:`FAULTS`); ``{"fault": null}`` clears it.

Like Google, it serves only the models it lists (:data:`MODELS` by default): any other model
is Google's 404 ``NOT_FOUND``. ``any_model`` serves every name, for tests that give each case a
model of its own (a quota window apart) and listing shows the configured models.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import orjson

from knowctl.errors import error_body, retry_delay_text, retry_info
from knowctl.net.asgi import (
    JSON,
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    read_body,
    respond,
    respond_error,
    respond_json,
)
from knowctl.policy.paths import Action, ApiCall, Family, allowed_methods, parse_path
from knowctl.simulator import answers
from knowctl.simulator.quota import Refusal, SlidingWindowQuota

FAULTS = ("error500", "reset", "cut_stream", "invalid_json", "hang", "denied", "bad_key")
# Google's answers when the project's API is disabled and when the key is not valid, with the
# account facts they carry (project number, console link, ErrorInfo metadata).
SIMULATED_PROJECT = "123456789012"
_DENIED = {
    "error": {
        "code": 403,
        "message": f"Generative Language API has not been used in project {SIMULATED_PROJECT} before or it "
        "is disabled. Enable it by visiting https://console.developers.google.com/apis/api/"
        f"generativelanguage.googleapis.com/overview?project={SIMULATED_PROJECT} then retry.",
        "status": "PERMISSION_DENIED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "SERVICE_DISABLED",
                "domain": "googleapis.com",
                "metadata": {
                    "consumer": f"projects/{SIMULATED_PROJECT}",
                    "service": "generativelanguage.googleapis.com",
                },
            }
        ],
    }
}
_BAD_KEY = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    }
}
# Models the Gemini API serves (its models page, mid-2026), and the aliases it resolves.
MODELS = (
    "gemini-3.5-flash",
    "gemini-3.1-pro-preview",
    "gemini-3.1-flash-lite",
    "gemini-3-flash-preview",
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-pro-latest",
    "gemini-flash-latest",
    "gemini-flash-lite-latest",
    "gemini-embedding-001",
)
GENERATE_METHODS = ("generateContent", "streamGenerateContent", "countTokens")
EMBED_METHODS = ("embedContent", "batchEmbedContents", "countTokens")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
GEMINI_NOT_FOUND = (
    "models/{model} is not found for API version {version}, or is not supported for {method}. "
    "Call ListModels to see the list of available models and their supported methods."
)
VERTEX_NOT_FOUND = (
    "Publisher Model `projects/{project}/locations/{location}/publishers/google/models/{model}` "
    "was not found or your project does not have access to it. Please ensure you are using a "
    "valid model version. For more information, see: "
    "https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions"
)
SSE = b"text/event-stream"
_SSE_HEADERS = [(b"content-type", SSE), (b"cache-control", b"no-cache")]
_ARRAY_HEADERS = [(b"content-type", JSON)]
_CONTROL_ROUTES = {
    "/_simulator/stats": ("GET",),
    "/_simulator/reset": ("POST",),
    "/_simulator/config": ("GET", "POST"),
}
_SSE_QUERY = (b"alt=sse", b"%24alt=sse", b"$alt=sse")
# Methods told apart by model kind; any other action on a listed model goes on to its handler.
_MODEL_METHODS = frozenset(GENERATE_METHODS + EMBED_METHODS)

GEMINI_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor "
    "your current usage, head to: https://ai.dev/usage?tab=rate-limit. \n"
    "* Quota exceeded for metric: {metric}, limit: {limit}, model: {model}\nPlease retry in {delay}s."
)
VERTEX_QUOTA_MESSAGE = (
    "Resource exhausted. Please try again later. Please refer to "
    "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details."
)
INTERNAL_MESSAGE = (
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting"
)
_QUOTA_IDS = {
    "requests": (
        "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
    ),
    "tokens": (
        "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
        "GenerateContentInputTokensPerModelPerMinute-FreeTier",
    ),
}


@dataclass(slots=True)
class SimulatorConfig:
    """Run-time knobs; ``rpm``/``tpm`` of 0 mean unlimited."""

    latency_ms: float = 0.0
    rpm: int = 0
    tpm: int = 0
    window_s: float = 60.0
    chunk_delay_ms: float = 0.0
    chunks: int = answers.DEFAULT_CHUNKS
    max_body_bytes: int = 32 * 1024 * 1024
    models: tuple[str, ...] = MODELS
    any_model: bool = False


@dataclass(slots=True)
class _Counters:
    served: int = 0
    rejected: int = 0
    streams: int = 0
    count_tokens: int = 0
    other: int = 0
    listings: int = 0
    bad_requests: int = 0
    faults: int = 0
    not_found: int = 0
    prompt_tokens: int = 0
    candidates_tokens: int = 0


def _is_sse(query: bytes) -> bool:
    return b"alt=sse" in query and any(p in _SSE_QUERY for p in query.split(b"&"))


def supported_methods(model: str) -> tuple[str, ...]:
    """What Google's model of that name answers: embedding models embed, the others generate."""
    return EMBED_METHODS if "embedding" in model else GENERATE_METHODS


def _model_description(family: Family, model: str) -> dict[str, Any]:
    prefix = "models/" if family is Family.GEMINI else "publishers/google/models/"
    return {
        "name": prefix + model,
        "version": "001",
        "displayName": f"{model} (knowctl simulator)",
        "description": "A development/test stand-in served by knowctl simulate, not Google.",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": list(supported_methods(model)),
    }


def not_found_error(call: ApiCall, method: str) -> bytes:
    """Google's 404 for a model it does not serve (or that does not answer ``method``)."""
    if call.family is Family.GEMINI:
        message = GEMINI_NOT_FOUND.format(model=call.model, version=call.version, method=method)
    else:  # Vertex names the resource in full; express mode has no project in the path
        message = VERTEX_NOT_FOUND.format(
            project=call.project or SIMULATED_PROJECT, location=call.location or "global", model=call.model
        )
    return error_body(404, message)


def check_models(value: Any) -> tuple[str, ...]:
    """A model list from a flag or the control endpoint (raises :class:`answers.BadRequest`)."""
    if isinstance(value, str):
        value = [name.strip() for name in value.split(",") if name.strip()]
    if not isinstance(value, list | tuple) or not value:
        raise answers.BadRequest("models must be a non-empty list of model names")
    names: list[str] = []
    for name in value:
        if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name.removeprefix("models/")):
            raise answers.BadRequest(f"models: {name!r} is not a model name such as gemini-2.5-flash")
        names.append(name.removeprefix("models/"))
    return tuple(dict.fromkeys(names))


def quota_error(call: ApiCall, refusal: Refusal) -> bytes:
    """Google's 429 body for the family: Gemini API with RetryInfo, Vertex's shared-quota text."""
    if call.family is not Family.GEMINI:
        return error_body(429, VERTEX_QUOTA_MESSAGE)
    # Rounded up to the millisecond, so a client that waits exactly this long finds room.
    delay = max(0.001, math.ceil(refusal.retry_after * 1000) / 1000)
    metric, quota_id = _QUOTA_IDS[refusal.metric]
    message = GEMINI_QUOTA_MESSAGE.format(
        metric=metric, limit=refusal.limit, model=call.model, delay=retry_delay_text(delay)[:-1]
    )
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": metric,
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": call.model},
                    "quotaValue": str(refusal.limit),
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        retry_info(delay),
    ]
    return error_body(429, message, details=details)


async def _drop_connection(send: Send, receive: Receive) -> None:
    """Close the client's connection without a (complete) answer.

    ASGI has no message for this, so reach the server's transport through uvicorn's bound
    ``send`` and abort it (a TCP reset). Mounted elsewhere, raise: the caller sees a failure.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        raise ConnectionResetError("knowctl simulator: injected connection drop")
    transport.abort()
    # Wait until the server has seen the loss, or it would answer a 500 on our behalf.
    async with asyncio.timeout(5):
        while (await receive())["type"] != "http.disconnect":
            pass


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class SimulatorApp:
    """The ASGI app; see the module docstring."""

    def __init__(self, config: SimulatorConfig | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = replace(config) if config is not None else SimulatorConfig()
        self.clock = clock
        self.quota = SlidingWindowQuota(self.config.rpm, self.config.tpm, self.config.window_s)
        self.counters = _Counters()
        self.by_model: dict[str, int] = {}
        self.fault: str | None = None
        self.fault_count = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/_simulator/"):
            await self._control(path, scope["method"], receive, send)
            return
        call = parse_path(path)
        if call is None:
            await respond_error(send, 404, f"The requested URL {path} was not found on this server.")
            return
        if scope["method"] not in allowed_methods(call):
            await respond_error(send, 405, f"Method {scope['method']} is not allowed for {path}.")
            return
        if call.model is None or call.action is None:  # GET on the collection or on one model
            self.counters.listings += 1
            if call.model is None:
                key = "models" if call.family is Family.GEMINI else "publisherModels"
                listed = [_model_description(call.family, m) for m in self.config.models]
                await respond_json(send, 200, {key: listed})
            elif self.serves(call.model, None):
                await respond_json(send, 200, _model_description(call.family, call.model))
            else:
                self.counters.not_found += 1
                await respond(send, 404, not_found_error(call, "get"))
            return
        try:
            body = await read_body(receive, self.config.max_body_bytes, None)
        except BodyTooLarge:
            await respond_error(send, 413, "Request payload size exceeds the limit.")
            return
        except ClientDisconnected:
            return
        action = call.action
        if not self.serves(call.model, action):
            self.counters.not_found += 1
            error = not_found_error(call, action)
            # Errors of a JSON-array stream come wrapped in [ ... ], as Google sends them.
            array = action == Action.STREAM.value and not _is_sse(scope["query_string"])
            await respond(send, 404, b"[" + error + b"]" if array else error)
            return
        if action == Action.GENERATE.value or action == Action.STREAM.value:
            await self._generate(call, call.model, body, scope, receive, send)
        elif action == Action.COUNT_TOKENS.value:
            await self._count_tokens(call, body, send)
        else:
            await self._other(call, call.model, body, send)

    def serves(self, model: str, method: str | None) -> bool:
        """Whether a call of ``method`` (None: a GET of the model) on ``model`` is answered."""
        if self.config.any_model:
            return True
        if model not in self.config.models:
            return False
        return method is None or method in supported_methods(model) or method not in _MODEL_METHODS

    async def _bad_request(self, send: Send, message: str, array: bool = False) -> None:
        self.counters.bad_requests += 1
        body = error_body(400, message)
        await respond(send, 400, b"[" + body + b"]" if array else body)

    async def _generate(
        self, call: ApiCall, model: str, body: bytes, scope: Scope, receive: Receive, send: Send
    ) -> None:
        stream = call.action == Action.STREAM.value
        sse = stream and _is_sse(scope["query_string"])
        array = stream and not sse  # errors of a JSON-array stream come wrapped in [ ... ]
        try:
            answer = answers.make_answer(model, answers.parse_json_object(body), body)
        except answers.BadRequest as exc:
            await self._bad_request(send, str(exc), array)
            return
        fault = self._take_fault()
        refusal = None if fault else self.quota.admit(self.clock(), answer.prompt_tokens)
        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms / 1000)
        if fault is not None:
            await self._inject(fault, stream, sse, answer, receive, send)
            return
        if refusal is not None:
            self.counters.rejected += 1
            error = quota_error(call, refusal)
            await respond(send, 429, b"[" + error + b"]" if array else error)
            return
        counters = self.counters
        counters.served += 1
        counters.prompt_tokens += answer.prompt_tokens
        counters.candidates_tokens += answer.candidates_tokens
        self.by_model[model] = self.by_model.get(model, 0) + 1
        if not stream:
            await respond(send, 200, orjson.dumps(answers.response(answer)))
            return
        counters.streams += 1
        await self._stream(answers.stream_chunks(answer, self.config.chunks), sse, send)

    async def _stream(self, chunks: list[dict[str, Any]], sse: bool, send: Send, upto: int = -1) -> None:
        """Send the chunks, one ASGI message each; with ``upto`` >= 0, stop after that many, open."""
        await send(
            {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS if sse else _ARRAY_HEADERS}
        )
        delay = self.config.chunk_delay_ms / 1000
        last = len(chunks) - 1 if upto < 0 else -1  # a cut stream never sends its end
        for i, chunk in enumerate(chunks):
            if i == upto:
                return
            if i and delay > 0:
                await asyncio.sleep(delay)
            data = orjson.dumps(chunk)
            if sse:
                piece = b"data: " + data + b"\r\n\r\n"
            else:
                piece = (b"[" if i == 0 else b"\n,\r\n") + data + (b"\n]" if i == last else b"")
            await send({"type": "http.response.body", "body": piece, "more_body": i != last})

    def _take_fault(self) -> str | None:
        if self.fault is None:
            return None
        fault = self.fault
        self.fault_count -= 1
        if self.fault_count <= 0:
            self.fault, self.fault_count = None, 0
        self.counters.faults += 1
        return fault

    async def _inject(
        self, fault: str, stream: bool, sse: bool, answer: answers.Answer, receive: Receive, send: Send
    ) -> None:
        if fault == "error500":
            error = error_body(500, INTERNAL_MESSAGE)
            await respond(send, 500, b"[" + error + b"]" if stream and not sse else error)
        elif fault in ("denied", "bad_key"):
            data = orjson.dumps(_DENIED if fault == "denied" else _BAD_KEY)
            status = 403 if fault == "denied" else 400
            await respond(send, status, b"[" + data + b"]" if stream and not sse else data)
        elif fault == "hang":
            await _wait_disconnect(receive)
        elif fault == "reset":
            await _drop_connection(send, receive)
        elif fault == "invalid_json":
            broken = b'{"candidates": [{"content": {"role": "model", "parts": [{"text": "cut'
            if sse:
                await self._raw(send, SSE, b"data: " + broken + b"\r\n\r\n")
            else:
                await self._raw(send, JSON, (b"[" + broken + b"\n]") if stream else broken)
        else:  # cut_stream: part of the answer, then the connection goes
            if stream:
                chunks = answers.stream_chunks(answer, max(2, self.config.chunks))
                await self._stream(chunks, sse, send, upto=max(1, len(chunks) // 2))
            else:
                data = orjson.dumps(answers.response(answer))
                headers = [(b"content-type", JSON), (b"content-length", str(len(data)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
            await _drop_connection(send, receive)

    @staticmethod
    async def _raw(send: Send, content_type: bytes, body: bytes) -> None:
        await respond(send, 200, body, content_type)

    async def _count_tokens(self, call: ApiCall, body: bytes, send: Send) -> None:
        try:
            request = answers.parse_json_object(body)
            result: dict[str, int] = {"totalTokens": answers.count_tokens_request(request)}
            if call.family is not Family.GEMINI:
                result["totalBillableCharacters"] = answers.billable_characters(request)
        except answers.BadRequest as exc:
            await self._bad_request(send, str(exc))
            return
        self.counters.count_tokens += 1
        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms / 1000)
        await respond_json(send, 200, result)

    async def _other(self, call: ApiCall, model: str, body: bytes, send: Send) -> None:
        if call.action not in ("embedContent", "batchEmbedContents"):
            await respond_error(send, 404, f"Method not found: {call.action}.")
            return
        try:
            request = answers.parse_json_object(body)
        except answers.BadRequest as exc:
            await self._bad_request(send, str(exc))
            return
        if call.action == "embedContent":
            result: dict[str, Any] = {"embedding": {"values": answers.embedding(model, request)}}
        else:
            requests = request.get("requests")
            if not isinstance(requests, list):
                await self._bad_request(send, "* BatchEmbedContentsRequest.requests: must be a list")
                return
            items = [r if isinstance(r, dict) else {} for r in requests]
            result = {"embeddings": [{"values": answers.embedding(model, r)} for r in items]}
        self.counters.other += 1
        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms / 1000)
        await respond_json(send, 200, result)

    # ----- control endpoints -----

    def stats_json(self) -> dict[str, Any]:
        now_requests, now_tokens = self.quota.in_window(self.clock())
        return {
            **asdict(self.counters),
            "by_model": dict(self.by_model),
            "max_in_window": self.quota.max_in_window,
            "max_tokens_in_window": self.quota.max_tokens_in_window,
            "in_window": now_requests,
            "tokens_in_window": now_tokens,
            "config": self.config_json(),
        }

    def config_json(self) -> dict[str, Any]:
        return {**asdict(self.config), "fault": self.fault, "fault_count": self.fault_count}

    def reset(self) -> None:
        self.counters = _Counters()
        self.by_model.clear()
        self.quota.reset()
        self.fault, self.fault_count = None, 0

    def configure(self, changes: dict[str, Any]) -> None:
        """Validate every change first, then apply them all (raises :class:`answers.BadRequest`)."""
        known = {f.name for f in fields(SimulatorConfig)} | {"fault", "count"}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise answers.BadRequest(f"unknown simulator setting(s): {', '.join(unknown)}")
        new = replace(self.config)
        for name in ("latency_ms", "chunk_delay_ms", "window_s"):
            if name in changes:
                value = changes[name]
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise answers.BadRequest(f"{name} must be a number >= 0")
                setattr(new, name, float(value))
        for name in ("rpm", "tpm", "chunks", "max_body_bytes"):
            if name in changes:
                value = changes[name] if changes[name] is not None else 0
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise answers.BadRequest(f"{name} must be an integer >= 0 (0 or null: unlimited)")
                setattr(new, name, value)
        if "models" in changes:
            new.models = check_models(changes["models"])
        if "any_model" in changes:
            if not isinstance(changes["any_model"], bool):
                raise answers.BadRequest("any_model must be true or false")
            new.any_model = changes["any_model"]
        if new.window_s <= 0 or new.chunks < 1:
            raise answers.BadRequest("window_s must be > 0 and chunks >= 1")
        fault, count = self.fault, self.fault_count
        if "fault" in changes:
            fault = changes["fault"]
            count = changes.get("count", 1)
            if fault is not None and fault not in FAULTS:
                raise answers.BadRequest(f"fault must be one of {', '.join(FAULTS)} or null")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise answers.BadRequest("count must be an integer >= 0")
            if fault is None or count == 0:
                fault, count = None, 0
        self.config = new
        self.quota.rpm, self.quota.tpm, self.quota.window = new.rpm, new.tpm, new.window_s
        self.fault, self.fault_count = fault, count

    async def _control(self, path: str, method: str, receive: Receive, send: Send) -> None:
        allowed = _CONTROL_ROUTES.get(path)
        if allowed is None:
            await respond_error(send, 404, f"The requested URL {path} was not found on this server.")
            return
        if method not in allowed:
            await respond_error(send, 405, f"Method {method} is not allowed for {path}.")
            return
        if path == "/_simulator/stats":
            await respond_json(send, 200, self.stats_json())
            return
        try:
            body = await read_body(receive, 1024 * 1024, None)
        except (BodyTooLarge, ClientDisconnected):
            await respond_error(send, 413, "Request payload size exceeds the limit.")
            return
        if path == "/_simulator/reset":
            self.reset()
        elif method == "POST":
            try:
                self.configure(answers.parse_json_object(body or b"{}"))
            except answers.BadRequest as exc:
                await respond_error(send, 400, str(exc))
                return
        await respond_json(send, 200, self.config_json() if path.endswith("config") else self.stats_json())

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
