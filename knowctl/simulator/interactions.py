"""The simulator's Interactions API (``/{version}/interactions``; docs/wire.md): create, get
(whole or as a resumable event stream), cancel and delete, in the shapes google-genai 3.x parses.

Prompt tokens are the texts :func:`knowctl.policy.wire.interactions.prompt_texts` reads, by the
simulator's rule (ceil(bytes / 4), at least 1), so the gateway's estimates match exactly. A turn
that names ``previous_interaction_id`` bills the history (the previous turn's input and output)
as input, as Google does for server-side history; that sum is also what the quota is charged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

import orjson

from knowctl.errors import error_body
from knowctl.net.asgi import Send, respond
from knowctl.policy.paths import CANCEL, ApiCall
from knowctl.policy.wire import interactions as wire
from knowctl.simulator import answers
from knowctl.simulator.google_errors import not_found_error, quota_error
from knowctl.simulator.interaction_store import CANCELLED, IN_PROGRESS, Record, iso_now, new_id
from knowctl.simulator.state import SimulatorState
from knowctl.simulator.wire import SSE

_SSE_HEADERS = [(b"content-type", SSE), (b"cache-control", b"no-cache")]
NOT_FOUND_MESSAGE = "Requested entity was not found."


async def handle(
    state: SimulatorState, call: ApiCall, method: str, query: bytes, body: bytes, send: Send
) -> None:
    """One Interactions API call; ``parse_path`` and ``allowed_methods`` have vetted the path."""
    if call.resource is None:
        await _create(state, call, body, send)
        return
    state.counters.interaction_accesses += 1
    record = state.interaction_book.get(call.resource, state.clock())
    if record is None:
        state.counters.not_found += 1
        await respond(send, 404, error_body(404, NOT_FOUND_MESSAGE))
        return
    if method == "DELETE":
        state.interaction_book.delete(record.id)
        await respond(send, 200, b"{}")
    elif call.action == CANCEL:
        if not record.final:
            record.status, record.updated = CANCELLED, iso_now()
        await respond(send, 200, orjson.dumps(interaction_json(record)))
    else:
        params = parse_qs(query.decode("latin-1"))
        if params.get("stream", [""])[0] == "true":
            await _stream(state, record, send, params.get("last_event_id", [None])[0])
        else:
            await respond(send, 200, orjson.dumps(interaction_json(record)))


async def _bad_request(state: SimulatorState, send: Send, message: str) -> None:
    state.counters.bad_requests += 1
    await respond(send, 400, error_body(400, message))


async def _create(state: SimulatorState, call: ApiCall, body: bytes, send: Send) -> None:
    try:
        payload = answers.parse_json_object(body)
    except answers.BadRequest as exc:
        await _bad_request(state, send, str(exc))
        return
    target = wire.target(payload)
    if target is None:
        await _bad_request(state, send, "Either model or agent must be set.")
        return
    kind, name = target
    background, store = payload.get("background") is True, payload.get("store") is not False
    if background and not store:
        await _bad_request(state, send, "background=true requires store=true.")
        return
    named = replace(call, model=name)  # errors name the model, as generateContent's do
    if kind == "model" and not state.serves(name, "generateContent"):
        state.counters.not_found += 1
        await respond(send, 404, not_found_error(named, "createInteraction"))
        return
    history = 0
    previous = wire.previous_id(payload)
    if previous is not None:
        earlier = state.interaction_book.get(previous, state.clock())
        if earlier is None:
            state.counters.not_found += 1
            await respond(send, 404, error_body(404, f"Interaction {previous} was not found."))
            return
        history = earlier.input_tokens + earlier.output_tokens
    texts = list(wire.prompt_texts(payload))
    input_tokens = answers.prompt_tokens(texts) + history
    refusal = state.quota.admit(state.clock(), input_tokens)
    if state.config.latency_ms > 0:
        await asyncio.sleep(state.config.latency_ms / 1000)
    if refusal is not None:
        state.counters.rejected += 1
        await respond(send, 429, quota_error(named, refusal))
        return
    text, _ = answers.truncate(answers.answer_text(name, texts), wire.max_output_tokens(payload))
    record = Record(
        id=new_id(),
        kind=kind,
        name=name,
        input_texts=texts,
        text=text,
        input_tokens=input_tokens,
        output_tokens=answers.token_count(len(text)),
        status=IN_PROGRESS if background else wire.COMPLETED,
        ready_at=state.clock() + state.config.background_ms / 1000,
        previous_id=previous,
    )
    record.updated = record.created
    _count(state, record)
    if store:
        state.interaction_book.put(record)
    if payload.get("stream") is True:
        state.counters.streams += 1
        await _stream(state, record, send, None)
    else:
        await respond(send, 200, orjson.dumps(interaction_json(record)))


def _count(state: SimulatorState, record: Record) -> None:
    counters = state.counters
    counters.served += 1
    counters.interactions += 1
    counters.prompt_tokens += record.input_tokens
    counters.candidates_tokens += record.output_tokens
    state.by_model[record.name] = state.by_model.get(record.name, 0) + 1


def usage_json(record: Record) -> dict[str, int]:
    return {
        "total_input_tokens": record.input_tokens,
        "total_output_tokens": record.output_tokens,
        "total_tokens": record.input_tokens + record.output_tokens,
    }


def interaction_json(record: Record, *, steps: bool = True) -> dict[str, Any]:
    """The Interaction resource as it stands; a completed one carries its steps and usage."""
    out: dict[str, Any] = {
        "id": record.id,
        record.kind: record.name,
        "status": record.status,
        "created": record.created,
        "updated": record.updated or record.created,
    }
    if record.previous_id is not None:
        out["previous_interaction_id"] = record.previous_id
    if record.status == wire.COMPLETED:
        if steps:
            # The SDK's ``output_text`` joins the text of the last model_output steps.
            out["steps"] = [{"type": "model_output", "content": [{"type": "text", "text": record.text}]}]
        out["usage"] = usage_json(record)
    return out


def _start_events(record: Record) -> list[dict[str, Any]]:
    started = {**interaction_json(record), "status": IN_PROGRESS, "object": "interaction"}
    started.pop("usage", None)
    started.pop("steps", None)
    return [
        {"event_type": wire.CREATED_EVENT, "interaction": started},
        {"event_type": "interaction.status_update", "interaction_id": record.id, "status": IN_PROGRESS},
    ]


def _end_events(record: Record, chunks: int) -> list[dict[str, Any]]:
    """What follows the start once the interaction is final: its text as one model_output
    step in deltas, then ``interaction.completed`` with the usage (or the final status)."""
    if record.status != wire.COMPLETED:
        return [
            {"event_type": "interaction.status_update", "interaction_id": record.id, "status": record.status}
        ]
    events: list[dict[str, Any]] = [
        {"event_type": "step.start", "index": 0, "step": {"type": "model_output"}}
    ]
    events.extend(
        {"event_type": "step.delta", "index": 0, "delta": {"type": "text", "text": piece}}
        for piece in answers.split_chunks(record.text, chunks)
    )
    events.append({"event_type": "step.stop", "index": 0})
    completed = {**interaction_json(record, steps=False), "object": "interaction"}
    events.append({"event_type": wire.COMPLETED_EVENT, "interaction": completed})
    return events


def _frames(events: list[dict[str, Any]], first: int) -> Iterator[tuple[str, bytes]]:
    """Each event with its ``event_id`` (``e1``, ``e2``... by position, so a resumed stream
    names the same events), framed with an ``id:`` line for SSE clients that resume by it."""
    for n, event in enumerate(events, first):
        event_id = f"e{n}"
        data = orjson.dumps({**event, "event_id": event_id})
        yield event_id, b"id: " + event_id.encode() + b"\ndata: " + data + b"\n\n"


async def _stream(state: SimulatorState, record: Record, send: Send, after: str | None) -> None:
    """The interaction's events, from the one after ``after`` (all of them when None or
    unknown); an interaction still in progress holds the stream open until it is final."""
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    # Event ids are e1, e2...: after one past the end, nothing follows; after a foreign one, all.
    skipping = after is not None and after.startswith("e") and after[1:].isdigit()
    delay = state.config.chunk_delay_ms / 1000

    async def emit(events: list[dict[str, Any]], first: int) -> None:
        nonlocal skipping
        for event_id, frame in _frames(events, first):
            if skipping:
                skipping = event_id != after
                continue
            await send({"type": "http.response.body", "body": frame, "more_body": True})
            if delay > 0:
                await asyncio.sleep(delay)

    start = _start_events(record)
    await emit(start, 1)
    while True:
        record.settle(state.clock())
        if record.final:
            break
        await asyncio.sleep(max(0.005, min(0.05, record.ready_at - state.clock())))
    await emit(_end_events(record, state.config.chunks), len(start) + 1)
    await send({"type": "http.response.body", "body": b"", "more_body": False})
