"""The simulator's OpenAI-compatible endpoint (``/v1beta/openai/...``; docs/wire.md): chat
completions (whole, or SSE chunks ending in ``data: [DONE]``), embeddings (float or base64)
and the model listing, in the shapes the ``openai`` SDK parses.

Errors here are OpenAI's shape (:func:`knowctl.policy.wire.openai.error_body`), and a quota
refusal carries ``retry-after``, which the SDK reads. Prompt tokens are the texts
:func:`knowctl.policy.wire.openai.prompt_texts` reads, by the simulator's rule, so the
gateway's estimates match exactly.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from typing import Any

import orjson

from knowctl.errors import retry_after_header
from knowctl.net.asgi import JSON, Send, respond
from knowctl.policy.paths import OPENAI_CHAT, OPENAI_EMBEDDINGS, ApiCall
from knowctl.policy.wire import openai as wire
from knowctl.simulator import answers
from knowctl.simulator.quota import Refusal
from knowctl.simulator.state import SimulatorState
from knowctl.simulator.wire import SSE

_SSE_HEADERS = [(b"content-type", SSE), (b"cache-control", b"no-cache")]
QUOTA_MESSAGE = "Resource has been exhausted (e.g. check quota)."


async def handle(state: SimulatorState, call: ApiCall, body: bytes, send: Send) -> None:
    """One OpenAI-compatible call; ``parse_path`` and ``allowed_methods`` have vetted the path."""
    if call.resource not in (OPENAI_CHAT, OPENAI_EMBEDDINGS):
        await _models(state, call, send)
        return
    try:
        payload = answers.parse_json_object(body)
    except answers.BadRequest as exc:
        await error(state, send, 400, str(exc))
        return
    model = wire.model_name(payload)
    if model is None:
        await error(state, send, 400, "model: a model name is required.")
        return
    method = "generateContent" if call.resource == OPENAI_CHAT else "embedContent"
    if not state.serves(model, method):
        state.counters.not_found += 1
        await respond(send, 404, wire.error_body(404, f"models/{model} is not found for {method}."))
        return
    if call.resource == OPENAI_CHAT:
        await _chat(state, model, payload, send)
    else:
        await _embeddings(state, model, payload, send)


async def error(state: SimulatorState, send: Send, status: int, message: str) -> None:
    """An OpenAI-shaped error (a 400 is counted as a bad request)."""
    if status == 400:
        state.counters.bad_requests += 1
    await respond(send, status, wire.error_body(status, message))


async def _refuse(state: SimulatorState, send: Send, refusal: Refusal) -> None:
    state.counters.rejected += 1
    headers = [(b"retry-after", retry_after_header(refusal.retry_after).encode())]
    await respond(send, 429, wire.error_body(429, QUOTA_MESSAGE), JSON, headers)


async def _latency(state: SimulatorState) -> None:
    if state.config.latency_ms > 0:
        await asyncio.sleep(state.config.latency_ms / 1000)


async def _chat(state: SimulatorState, model: str, payload: dict[str, Any], send: Send) -> None:
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        await error(state, send, 400, "messages: a non-empty list of messages is required.")
        return
    texts = list(wire.prompt_texts(payload))
    prompt = answers.prompt_tokens(texts)
    refusal = state.quota.admit(state.clock(), prompt)
    await _latency(state)
    if refusal is not None:
        await _refuse(state, send, refusal)
        return
    text, cut = answers.truncate(answers.answer_text(model, texts), wire.max_output_tokens(payload))
    finish = "length" if cut else "stop"
    output = answers.token_count(len(text))
    counters = state.counters
    counters.served += 1
    counters.openai_chats += 1
    counters.prompt_tokens += prompt
    counters.candidates_tokens += output
    state.by_model[model] = state.by_model.get(model, 0) + 1
    usage = {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}
    # Deterministic id (a hash of the model and the messages), as responseId is for generateContent.
    rid = "chatcmpl-" + answers.response_id(model, orjson.dumps(messages))
    base = {"id": rid, "created": int(time.time()), "model": model}
    if payload.get("stream") is not True:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        answer = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
        await respond(send, 200, orjson.dumps(answer))
        return
    counters.streams += 1
    options = payload.get("stream_options")
    with_usage = isinstance(options, dict) and options.get("include_usage") is True
    pieces = answers.split_chunks(text, state.config.chunks)
    chunks: list[dict[str, Any]] = []
    for i, piece in enumerate(pieces):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        last = i == len(pieces) - 1
        chunk = {**base, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish if last else None}
        ]}  # fmt: skip
        if with_usage:
            chunk["usage"] = None  # as OpenAI does: only the closing chunk counts
        chunks.append(chunk)
    if with_usage:  # the usage chunk: no choices, last before [DONE]
        chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    delay = state.config.chunk_delay_ms / 1000
    for i, chunk in enumerate(chunks):
        if i and delay > 0:
            await asyncio.sleep(delay)
        await send(
            {
                "type": "http.response.body",
                "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                "more_body": True,
            }
        )
    await send({"type": "http.response.body", "body": b"data: " + wire.DONE + b"\n\n"})


def _float32(vector: list[float]) -> list[float]:
    """The vector as float32 values, so that "float" and "base64" answers decode the same."""
    return list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector)))


async def _embeddings(state: SimulatorState, model: str, payload: dict[str, Any], send: Send) -> None:
    texts = wire.embedding_inputs(payload)
    if texts is None:
        await error(state, send, 400, "input: a string or a non-empty list of strings is required.")
        return
    encoding = payload.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        await error(state, send, 400, "encoding_format: must be 'float' or 'base64'.")
        return
    try:
        dims = answers.output_dimensionality(payload.get("dimensions"), "dimensions")
    except answers.BadRequest as exc:
        await error(state, send, 400, str(exc))
        return
    tokens = answers.prompt_tokens(texts)
    refusal = state.quota.admit(state.clock(), tokens, requests=len(texts))  # N texts, N requests
    await _latency(state)
    if refusal is not None:
        await _refuse(state, send, refusal)
        return
    data = []
    for i, text in enumerate(texts):
        vector = _float32(answers.embedding_vector(model, [text], dims))
        # base64: little-endian float32, which the SDK decodes.
        encoded: Any = (
            base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if encoding == "base64" else vector
        )
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    state.counters.other += 1
    state.counters.embedded_items += len(texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    await respond(send, 200, orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage}))


async def _models(state: SimulatorState, call: ApiCall, send: Send) -> None:
    """``GET /openai/models`` lists the configured models; ``/models/{m}`` describes one."""
    state.counters.listings += 1
    if call.model is None:
        listed = [_model(m) for m in state.config.models]
        await respond(send, 200, orjson.dumps({"object": "list", "data": listed}))
    elif state.serves(call.model, None):
        await respond(send, 200, orjson.dumps(_model(call.model)))
    else:
        state.counters.not_found += 1
        await respond(send, 404, wire.error_body(404, f"models/{call.model} is not found."))


def _model(name: str) -> dict[str, Any]:
    return {"id": f"models/{name}", "object": "model", "created": 0, "owned_by": "google"}
