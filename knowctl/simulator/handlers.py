"""The simulator's model-call handlers: generateContent, streamGenerateContent, countTokens, embeddings."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from knowctl.errors import error_body
from knowctl.net.asgi import Receive, Scope, Send, respond, respond_error, respond_json
from knowctl.policy.paths import Action, ApiCall, Family
from knowctl.simulator import answers, caches
from knowctl.simulator.faults import inject
from knowctl.simulator.google_errors import in_array, quota_error
from knowctl.simulator.state import SimulatorState
from knowctl.simulator.wire import is_sse, send_chunks


async def bad_request(state: SimulatorState, send: Send, message: str, array: bool = False) -> None:
    """Google's 400 INVALID_ARGUMENT, counted."""
    state.counters.bad_requests += 1
    await respond(send, 400, in_array(error_body(400, message), array))


async def _latency(state: SimulatorState) -> None:
    if state.config.latency_ms > 0:
        await asyncio.sleep(state.config.latency_ms / 1000)


async def generate(
    state: SimulatorState, call: ApiCall, model: str, body: bytes, scope: Scope, receive: Receive, send: Send
) -> None:
    """generateContent and streamGenerateContent: an answer, a quota refusal or an injected fault."""
    stream = call.action == Action.STREAM.value
    sse = stream and is_sse(scope["query_string"])
    array = stream and not sse  # errors of a JSON-array stream come wrapped in [ ... ]
    try:
        request = answers.parse_json_object(body)
        if call.family is Family.VERTEX and not _roles_given(request):
            raise answers.BadRequest("Please use a valid role: user, model.")  # Vertex's words
        cached = caches.cached_prefix(state, call, model, request)
        answer = answers.make_answer(model, request, body, cached)
    except answers.BadRequest as exc:
        await bad_request(state, send, str(exc), array)
        return
    except caches.CacheRefused as exc:
        state.counters.not_found += 1
        await respond(send, exc.status, in_array(exc.body, array))
        return
    fault = state.take_fault()
    refusal = None if fault else state.quota.admit(state.clock(), answer.prompt_tokens)
    await _latency(state)
    if fault is not None:
        await inject(fault, state.config, stream, sse, answer, receive, send)
        return
    if refusal is not None:
        state.counters.rejected += 1
        await respond(send, 429, in_array(quota_error(call, refusal), array))
        return
    counters = state.counters
    counters.served += 1
    counters.prompt_tokens += answer.prompt_tokens
    counters.candidates_tokens += answer.candidates_tokens
    counters.cached_content_tokens += answer.cached_tokens
    state.by_model[model] = state.by_model.get(model, 0) + 1
    tier = asked_tier(call, request, scope)
    state.by_tier[tier] = state.by_tier.get(tier, 0) + 1
    served = "standard" if tier == "priority" and state.config.downgrade_priority else tier
    if not stream:
        # Said only to calls that asked for a tier (what Google says otherwise is not on record).
        asked = call.family is not Family.VERTEX and "serviceTier" in request
        headers = [(b"x-gemini-service-tier", served.encode())] if asked else []
        await respond(send, 200, orjson.dumps(answers.response(answer)), extra_headers=headers)
        return
    counters.streams += 1
    chunks = answers.stream_chunks(answer, state.config.chunks)
    await send_chunks(send, chunks, sse, state.config.chunk_delay_ms)


def _roles_given(request: dict[str, Any]) -> bool:
    """Vertex refuses a content without its role; the Gemini API takes it as the user's."""
    contents = request.get("contents")
    return not isinstance(contents, list) or all(not isinstance(c, dict) or "role" in c for c in contents)


def asked_tier(call: ApiCall, request: dict[str, Any], scope: Scope) -> str:
    """The service tier a generation call asked for: ``serviceTier`` in a Gemini API body
    (standard when absent); on Vertex its request-type headers, as ``type/shared-type``."""
    if call.family is Family.VERTEX:
        headers = dict(scope["headers"])
        kind = headers.get(b"x-vertex-ai-llm-request-type", b"").decode("latin-1") or "-"
        shared = headers.get(b"x-vertex-ai-llm-shared-request-type", b"").decode("latin-1") or "-"
        return f"{kind}/{shared}"
    tier = request.get("serviceTier")  # the body as already read: no second parse
    return str(tier).lower() if tier else "standard"


async def count_tokens(state: SimulatorState, call: ApiCall, body: bytes, send: Send) -> None:
    """countTokens, with Vertex's totalBillableCharacters beside the token count; a request
    (or its ``generateContentRequest``) naming a context cache counts the cache's tokens in
    ``totalTokens`` and reports them as ``cachedContentTokenCount``."""
    try:
        request = answers.parse_json_object(body)
        result: dict[str, int] = {"totalTokens": answers.count_tokens_request(request)}
        inner = request.get("generateContentRequest", request.get("generate_content_request"))
        cached = caches.cached_prefix(
            state, call, call.model or "", inner if isinstance(inner, dict) else request
        )
        if cached is not None:
            result["totalTokens"] += cached.tokens
            result["cachedContentTokenCount"] = cached.tokens
        if call.family is not Family.GEMINI:
            result["totalBillableCharacters"] = answers.billable_characters(request)
    except answers.BadRequest as exc:
        await bad_request(state, send, str(exc))
        return
    except caches.CacheRefused as exc:
        state.counters.not_found += 1
        await respond(send, exc.status, exc.body)
        return
    state.counters.count_tokens += 1
    await _latency(state)
    await respond_json(send, 200, result)


async def other(state: SimulatorState, call: ApiCall, model: str, body: bytes, send: Send) -> None:
    """embedContent, batchEmbedContents and Vertex's predict on an embedding model (a batch of
    N counts N requests against the quota); any other method is Google's 404."""
    if call.action not in ("embedContent", "batchEmbedContents", "predict"):
        await respond_error(send, 404, f"Method not found: {call.action}.")
        return
    try:
        request = answers.parse_json_object(body)
        if call.action == "embedContent":
            items = [request]
        elif call.action == "predict":
            items = [_gemini_item(instance) for instance in _instances(request)]
        else:
            requests = request.get("requests")
            if not isinstance(requests, list):
                raise answers.BadRequest("* BatchEmbedContentsRequest.requests: must be a list")
            items = [r if isinstance(r, dict) else {} for r in requests]
        vectors = [answers.embedding(model, item) for item in items]
    except answers.BadRequest as exc:
        await bad_request(state, send, str(exc))
        return
    # The tokens the gateway estimates for the same items (each item's texts joined).
    tokens = answers.prompt_tokens([answers.embed_item_text(item) for item in items])
    # An empty batch embeds nothing and so spends nothing.
    refusal = state.quota.admit(state.clock(), tokens, requests=len(items)) if items else None
    await _latency(state)
    if refusal is not None:
        state.counters.rejected += 1
        await respond(send, 429, quota_error(call, refusal))
        return
    state.counters.other += 1
    state.counters.embedded_items += len(items)
    if call.action == "embedContent":
        result: dict[str, Any] = {"embedding": {"values": vectors[0]}}
    elif call.action == "predict":
        # Vertex's text-embedding answer: one prediction per instance, with its token count.
        result = {
            "predictions": [
                {
                    "embeddings": {
                        "values": v,
                        "statistics": {
                            "token_count": answers.prompt_tokens([answers.embed_item_text(item)]),
                            "truncated": False,
                        },
                    }
                }
                for v, item in zip(vectors, items, strict=True)
            ],
            "metadata": {"billableCharacterCount": sum(len(answers.embed_item_text(i)) for i in items)},
        }
    else:
        result = {"embeddings": [{"values": v} for v in vectors]}
    await respond_json(send, 200, result)


def _instances(request: dict[str, Any]) -> list[dict[str, Any]]:
    instances = request.get("instances")
    if not isinstance(instances, list) or not instances:
        raise answers.BadRequest("instances must be a non-empty list")
    if not all(isinstance(i, dict) and isinstance(i.get("content"), str) for i in instances):
        raise answers.BadRequest("each instance needs its content, as a string")
    return instances


def _gemini_item(instance: dict[str, Any]) -> dict[str, Any]:
    """A Vertex predict instance as the embedContent request it stands for (same vector)."""
    item: dict[str, Any] = {"content": {"parts": [{"text": instance["content"]}]}}
    if isinstance(instance.get("task_type"), str):
        item["taskType"] = instance["task_type"]
    if isinstance(instance.get("title"), str):
        item["title"] = instance["title"]
    return item
