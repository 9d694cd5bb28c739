"""The simulator's Interactions API and OpenAI-compatible endpoint (docs/wire.md): answers the
official SDKs parse, counted against the simulator's own quota like generateContent.

Prompt tokens are counted over the texts knowctl.policy.wire reads (ceil(bytes / 4), at least
1), the rule the gateway estimates with, so quota tests are exact. An interaction's usage
counts its history (the previous turns' input and output) as input, as Google bills it.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import struct
import time
from base64 import b64encode
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from knowctl.errors import error_body
from knowctl.net.asgi import JSON, Send, respond
from knowctl.policy.paths import OPENAI_CHAT, OPENAI_EMBEDDINGS, ApiCall
from knowctl.policy.wire import interactions as ix
from knowctl.policy.wire import openai
from knowctl.simulator import answers
from knowctl.simulator.google_errors import quota_error
from knowctl.simulator.state import SimulatorState

# Interactions the simulator remembers (the oldest go first).
MAX_KEPT = 10_000
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


@dataclass(slots=True)
class Kept:
    interaction: dict[str, Any]
    tokens: int  # input + output so far: the next turn's history
    events: list[bytes]


class SurfaceState:
    """The interactions one simulator keeps."""

    def __init__(self) -> None:
        self.kept: OrderedDict[str, Kept] = OrderedDict()
        self._events = itertools.count(1)

    def keep(self, interaction_id: str, kept: Kept) -> None:
        self.kept[interaction_id] = kept
        while len(self.kept) > MAX_KEPT:
            self.kept.popitem(last=False)

    def event_id(self) -> str:
        return f"evt_{next(self._events)}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def interactions(
    state: SimulatorState,
    surfaces: SurfaceState,
    call: ApiCall,
    method: str,
    query: str,
    body: bytes,
    send: Send,
) -> None:
    if call.resource is None:
        await _create(state, surfaces, body, send)
        return
    kept = surfaces.kept.get(call.resource)
    if kept is None:
        await respond(send, 404, error_body(404, f"Interaction {call.resource} not found."))
        return
    if method == "DELETE":
        del surfaces.kept[call.resource]
        await respond(send, 200, b"{}")
        return
    if call.action == "cancel":
        if kept.interaction["status"] not in ix.FINAL_STATUSES:
            kept.interaction["status"] = "cancelled"
        await respond(send, 200, orjson.dumps(kept.interaction))
        return
    if "stream=true" in query:
        after = next((p.split("=", 1)[1] for p in query.split("&") if p.startswith("last_event_id=")), None)
        frames = kept.events
        if after is not None:
            ids = [_frame_id(f) for f in frames]
            frames = frames[ids.index(after) + 1 :] if after in ids else frames
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send({"type": "http.response.body", "body": b"".join(frames)})
        return
    await respond(send, 200, orjson.dumps(kept.interaction))


def _frame_id(frame: bytes) -> str:
    first = frame.split(b"\n", 1)[0]
    return first[4:].decode() if first.startswith(b"id: ") else ""


async def _create(state: SimulatorState, surfaces: SurfaceState, body: bytes, send: Send) -> None:
    try:
        payload = answers.parse_json_object(body)
    except answers.BadRequest as exc:
        await respond(send, 400, error_body(400, str(exc)))
        return
    target = ix.target(payload)
    if target is None:
        await respond(send, 400, error_body(400, "One of model or agent must be set."))
        return
    kind, name = target
    history = 0
    previous = ix.previous_id(payload)
    if previous is not None:
        earlier = surfaces.kept.get(previous)
        if earlier is None:
            await respond(send, 404, error_body(404, f"Interaction {previous} not found."))
            return
        history = earlier.tokens
    texts = list(ix.prompt_texts(payload))
    prompt = answers.prompt_tokens(texts)
    refusal = state.quota.admit(state.clock(), prompt + history)
    if refusal is not None:
        state.counters.rejected += 1
        await respond(send, 429, quota_error(call_for_errors(), refusal))
        return
    text = answers.answer_text(name, texts)
    limit = ix.max_output_tokens(payload)
    if limit is not None and len(text) > 4 * limit:
        text = text[: 4 * limit]
    output = answers.token_count(len(text))
    state.counters.served += 1
    state.counters.interactions += 1
    state.counters.prompt_tokens += prompt + history
    state.counters.candidates_tokens += output
    if state.config.latency_ms > 0:
        await asyncio.sleep(state.config.latency_ms / 1000)
    interaction_id = "v1_" + secrets.token_urlsafe(18)
    usage = {"total_input_tokens": prompt + history, "total_output_tokens": output}
    usage["total_tokens"] = usage["total_input_tokens"] + output
    finished: dict[str, Any] = {
        "id": interaction_id,
        kind: name,
        "status": "completed",
        "created": _now(),
        "updated": _now(),
        "steps": [{"type": "model_output", "content": [{"type": "text", "text": text}]}],
        "usage": usage,
    }
    if previous is not None:
        finished["previous_interaction_id"] = previous
    started = {**finished, "status": "in_progress", "steps": []}
    started.pop("usage")
    events = [
        _frame(surfaces, {"event_type": ix.CREATED_EVENT, "interaction": started}),
        _frame(surfaces, {"event_type": ix.COMPLETED_EVENT, "interaction": finished}),
    ]
    kept = Kept(finished, usage["total_tokens"], events)
    background = payload.get("background") is True
    if payload.get("store") is not False:
        surfaces.keep(interaction_id, kept)
    if background:
        kept.interaction = started
        asyncio.get_running_loop().call_later(state.config.background_ms / 1000, _finish, kept, finished)
        await respond(send, 200, orjson.dumps(started))
        return
    if payload.get("stream") is True:
        state.counters.streams += 1
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send({"type": "http.response.body", "body": b"".join(events)})
        return
    await respond(send, 200, orjson.dumps(finished))


def _finish(kept: Kept, finished: dict[str, Any]) -> None:
    if kept.interaction.get("status") == "in_progress":  # not cancelled meanwhile
        kept.interaction = finished


def _frame(surfaces: SurfaceState, event: dict[str, Any]) -> bytes:
    event_id = surfaces.event_id()
    event["event_id"] = event_id
    return b"id: " + event_id.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def call_for_errors() -> ApiCall:
    from knowctl.policy.paths import Family

    return ApiCall(Family.GEMINI, "v1", None, None)


async def openai_call(state: SimulatorState, call: ApiCall, body: bytes, send: Send) -> None:
    if call.resource not in (OPENAI_CHAT, OPENAI_EMBEDDINGS):
        listed = [{"id": f"models/{m}", "object": "model", "owned_by": "google"} for m in state.config.models]
        await respond(send, 200, orjson.dumps({"object": "list", "data": listed}))
        return
    try:
        payload = answers.parse_json_object(body)
    except answers.BadRequest as exc:
        await respond(send, 400, openai.error_body(400, str(exc)))
        return
    model = openai.model_name(payload)
    if model is None:
        await respond(send, 400, openai.error_body(400, "model is required"))
        return
    if call.resource == OPENAI_EMBEDDINGS:
        await _embeddings(state, model, payload, send)
        return
    texts = list(openai.prompt_texts(payload))
    prompt = answers.prompt_tokens(texts)
    refusal = state.quota.admit(state.clock(), prompt)
    if refusal is not None:
        state.counters.rejected += 1
        retry = str(max(1, int(refusal.retry_after + 0.999))).encode()
        await respond(
            send, 429, openai.error_body(429, "Resource has been exhausted."), JSON, [(b"retry-after", retry)]
        )
        return
    text = answers.answer_text(model, texts)
    limit = openai.max_output_tokens(payload)
    finish = "stop"
    if limit is not None and len(text) > 4 * limit:
        text, finish = text[: 4 * limit], "length"
    output = answers.token_count(len(text))
    state.counters.served += 1
    state.counters.openai_chats += 1
    state.counters.prompt_tokens += prompt
    state.counters.candidates_tokens += output
    if state.config.latency_ms > 0:
        await asyncio.sleep(state.config.latency_ms / 1000)
    usage = {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}
    base = {"id": "chatcmpl-" + secrets.token_hex(8), "created": int(time.time()), "model": model}
    if payload.get("stream") is not True:
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": finish}
        answer = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
        await respond(send, 200, orjson.dumps(answer))
        return
    state.counters.streams += 1
    chunks: list[dict[str, Any]] = []
    pieces = answers.split_chunks(text, state.config.chunks)
    for i, piece in enumerate(pieces):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        reason = finish if i == len(pieces) - 1 else None
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
        chunks.append({**base, "object": "chat.completion.chunk", "choices": [choice]})
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    frames = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    await send({"type": "http.response.body", "body": frames})


async def _embeddings(state: SimulatorState, model: str, payload: dict[str, Any], send: Send) -> None:
    texts = openai.embedding_inputs(payload)
    if texts is None:
        await respond(send, 400, openai.error_body(400, "input must be a string or a list of strings"))
        return
    for _ in texts:
        refusal = state.quota.admit(state.clock(), 1)
        if refusal is not None:
            state.counters.rejected += 1
            await respond(
                send,
                429,
                openai.error_body(429, "Resource has been exhausted."),
                JSON,
                [(b"retry-after", b"60")],
            )
            return
    dims = payload.get("dimensions")
    base64 = payload.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(texts):
        request: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
        if isinstance(dims, int) and not isinstance(dims, bool):
            request["outputDimensionality"] = dims
        vector = answers.embedding(model, request)
        encoded: Any = b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if base64 else vector
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    state.counters.other += 1
    state.counters.embedded_items += len(texts)
    tokens = answers.prompt_tokens(texts)
    answer = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    await respond(send, 200, orjson.dumps(answer))
