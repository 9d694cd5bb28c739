"""The Interactions API (``/{version}/interactions``): what a create body asks, what an
Interaction or its Server-Sent Events report (docs/wire.md).

A model-based interaction names ``model``, an agent-based one ``agent``. Text input comes as
``input`` (a string, one content object, or a list of contents / turns) beside a string
``system_instruction``; ``generation_config.max_output_tokens`` caps the answer. Usage is
``usage.total_input_tokens`` / ``total_output_tokens`` / ``total_tokens``; a stream ends with
an ``interaction.completed`` event that carries the whole Interaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from knowctl.policy.framing import load_object, renamed_counts

# Statuses after which an interaction changes no more.
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "incomplete", "budget_exceeded"})
COMPLETED = "completed"
COMPLETED_EVENT = "interaction.completed"
CREATED_EVENT = "interaction.created"


def _texts(value: Any, depth: int = 0) -> Iterator[str]:
    """Every text of an input value: strings, ``{"text": ...}`` contents, ``content`` lists
    of turns. Bounded in depth: a body is client input."""
    if depth > 8:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        text = value.get("text")
        if isinstance(text, str):
            yield text
        content = value.get("content")
        if content is not None:
            yield from _texts(content, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item, depth + 1)


def prompt_texts(payload: Mapping[str, Any] | None) -> Iterator[str]:
    """The system instruction and every text of ``input``."""
    if not payload:
        return
    system = payload.get("system_instruction")
    if isinstance(system, str):
        yield system
    yield from _texts(payload.get("input"))


def max_output_tokens(payload: Mapping[str, Any] | None) -> int | None:
    config = payload.get("generation_config") if payload else None
    if not isinstance(config, Mapping):
        return None
    value = config.get("max_output_tokens")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def target(payload: Mapping[str, Any]) -> tuple[str, str] | None:
    """("model" | "agent", its name without a ``models/`` prefix), or None if neither."""
    for kind in ("model", "agent"):
        name = payload.get(kind)
        if isinstance(name, str) and name:
            return kind, name.removeprefix("models/")
    return None


def previous_id(payload: Mapping[str, Any] | None) -> str | None:
    value = payload.get("previous_interaction_id") if payload else None
    return value if isinstance(value, str) and value else None


def creates_state(payload: Mapping[str, Any]) -> bool:
    """Whether the call leaves anything on Google's side (a stored interaction, a background
    run, a conversation turn): only calls that leave nothing may be answered from a cache."""
    return payload.get("store") is not False or bool(payload.get("background")) or bool(previous_id(payload))


# An Interaction's usage fields, and their usageMetadata names.
_USAGE_NAMES = {
    "total_input_tokens": "promptTokenCount",
    "total_output_tokens": "candidatesTokenCount",
    "total_thought_tokens": "thoughtsTokenCount",
    "total_tool_use_tokens": "toolUsePromptTokenCount",
    "total_tokens": "totalTokenCount",
}


def usage_metadata(usage: Any) -> dict[str, int] | None:
    """An Interaction's ``usage`` in generateContent's ``usageMetadata`` names, which the
    provider quota reconciles with."""
    return renamed_counts(usage, _USAGE_NAMES)


@dataclass(frozen=True, slots=True)
class Reported:
    """What an answer (one Interaction, or a stream's events) says about the interaction."""

    interaction_id: str | None
    status: str | None
    usage: dict[str, int] | None  # in usageMetadata names

    @property
    def complete(self) -> bool:
        return self.status == COMPLETED


def read_interaction(body: bytes) -> Reported | None:
    """One Interaction (a create's or a get's answer), or None if the body is not one."""
    found = load_object(body)
    if found is None or "error" in found:
        return None
    return _reported(found)


def _reported(interaction: Mapping[str, Any]) -> Reported:
    rid = interaction.get("id")
    status = interaction.get("status")
    return Reported(
        rid if isinstance(rid, str) and rid else None,
        status if isinstance(status, str) else None,
        usage_metadata(interaction.get("usage")),
    )


def sse_data(frame: bytes) -> bytes:
    """The data of one SSE frame (its ``data:`` lines joined)."""
    return b"\n".join(
        line[5:].lstrip(b" ")
        for line in frame.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"data:")
    )


def read_events(frames: Sequence[bytes]) -> Reported | None:
    """What a stream's events report: the id from its first event that names one, status and
    usage from its last ``interaction.completed`` (or status update); None if any event's data
    is not a JSON object (a broken answer)."""
    rid: str | None = None
    status: str | None = None
    usage: dict[str, int] | None = None
    for frame in frames:
        data = sse_data(frame)
        if not data:
            continue
        event = load_object(data)
        if event is None:
            return None
        if "error" in event and "event_type" not in event:
            status = "failed"
            continue
        inner = event.get("interaction")
        if isinstance(inner, Mapping):
            found = _reported(inner)
            rid = rid or found.interaction_id
            if event.get("event_type") == COMPLETED_EVENT:
                status, usage = found.status or COMPLETED, found.usage or usage
        elif event.get("event_type") == "interaction.status_update":
            rid = rid or (
                event.get("interaction_id") if isinstance(event.get("interaction_id"), str) else None
            )
            if isinstance(event.get("status"), str):
                status = event["status"]
            usage = usage_metadata(event.get("usage")) or usage
        elif event.get("event_type") == "error":
            status = "failed"
    return Reported(rid, status, usage)


def split_frames(data: bytes) -> tuple[tuple[bytes, ...], bool]:
    """A stream's frames as sent (event, id and data lines kept, so a replay is the same
    events), and whether the last one was terminated."""
    text = data.replace(b"\r\n", b"\n")
    terminated = text.endswith(b"\n\n")
    return tuple(frame for frame in text.split(b"\n\n") if frame.strip()), terminated


def render_frames(frames: Sequence[bytes]) -> bytes:
    return b"".join(frame + b"\n\n" for frame in frames)
