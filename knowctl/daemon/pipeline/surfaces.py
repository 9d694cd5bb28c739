"""An answer read and replayed in the shape of its API surface: generateContent's chunks, an
Interaction and its events, an OpenAI chat completion and its ``data:`` frames
(docs/wire.md). What the pipeline learns from each is the same: complete or not, the usage
in usageMetadata names, and the chunks a replay sends again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from knowctl.daemon.context import CallContext
from knowctl.net.asgi import JSON
from knowctl.policy.framing import render_json_array, render_sse, split_json_array, split_sse, summarize
from knowctl.policy.paths import Surface
from knowctl.policy.wire import interactions, openai

SSE = b"text/event-stream"


@dataclass(frozen=True, slots=True)
class Read:
    """What one finished answer came to."""

    complete: bool  # a complete success, worth keeping for the next identical call
    usage: dict[str, Any] | None  # in usageMetadata names
    chunks: tuple[bytes, ...]  # what a replay sends again, framing aside
    reported: interactions.Reported | None = None  # an interaction's id, status and usage


def read_answer(ctx: CallContext, body: bytes) -> Read | None:
    """A whole (not streamed) answer; None when it is not the JSON it should be."""
    surface = ctx.call.surface
    if surface is Surface.INTERACTIONS:
        found = interactions.read_interaction(body)
        if found is None:
            return None
        return Read(found.complete, found.usage, (body,), found)
    summary = openai.summarize((body,)) if surface is Surface.OPENAI else summarize((body,))
    if summary is None:
        return None
    return Read(summary[0], summary[1], (body,))


def read_stream(ctx: CallContext, data: bytes) -> Read | None:
    """A finished stream; None when it was cut off midway or is not what it should be (then
    its reservation stands and nothing is kept)."""
    surface = ctx.call.surface
    if surface is Surface.INTERACTIONS:
        frames, terminated = interactions.split_frames(data)
        found = interactions.read_events(frames) if terminated else None
        if found is None:
            return None
        return Read(found.complete, found.usage, frames, found)
    if surface is Surface.OPENAI:
        chunks, terminated = split_sse(data)  # [DONE] is a chunk too
        summary = openai.summarize(chunks) if terminated else None
    elif ctx.sse:
        chunks, terminated = split_sse(data)
        summary = summarize(chunks) if terminated else None
    else:
        parsed = split_json_array(data)
        chunks = parsed or ()
        summary = summarize(chunks) if parsed is not None else None
    if summary is None:
        return None
    return Read(summary[0], summary[1], chunks)


def render(ctx: CallContext, chunks: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    """(body, content type) replaying a kept answer in the framing this caller asked for."""
    if not ctx.streaming:
        return chunks[0], JSON
    surface = ctx.call.surface
    if surface is Surface.INTERACTIONS:
        return interactions.render_frames(chunks), SSE
    if surface is Surface.OPENAI:
        return openai.render_sse(chunks), SSE
    if ctx.sse:
        return render_sse(chunks), SSE
    return render_json_array(chunks), JSON
