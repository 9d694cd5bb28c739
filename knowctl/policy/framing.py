"""Google's answer framings, taken apart and put back together.

- plain JSON: one GenerateContentResponse;
- ``?alt=sse``: ``data: <chunk>`` frames, each ended by a blank line (``\\r\\n\\r\\n``);
- JSON array stream: ``[`` chunk ``\\n,\\r\\n`` chunk ... ``\\n]``.

Answers are kept as a tuple of chunk JSON texts, so one stored answer replays in whichever
framing the next caller asks for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

# finishReason values of an answer that ended as the model meant it to.
COMPLETE_REASONS = frozenset({"STOP", "MAX_TOKENS"})


def split_sse(data: bytes) -> tuple[tuple[bytes, ...], bool]:
    """The chunks of an SSE body, and whether its last frame was terminated."""
    text = data.replace(b"\r\n", b"\n")
    terminated = text.endswith(b"\n\n")
    chunks = []
    for frame in text.split(b"\n\n"):
        payload = b"\n".join(
            line[5:].lstrip(b" ") for line in frame.split(b"\n") if line.startswith(b"data:")
        )
        if payload:
            chunks.append(payload)
    return tuple(chunks), terminated


def split_json_array(data: bytes) -> tuple[bytes, ...] | None:
    """The chunks of a JSON-array stream, or None if the array is cut off or malformed."""
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(items, list):
        return None
    return tuple(orjson.dumps(item) for item in items)


def render_sse(chunks: Sequence[bytes]) -> bytes:
    return b"".join(b"data: " + chunk + b"\r\n\r\n" for chunk in chunks)


def render_json_array(chunks: Sequence[bytes]) -> bytes:
    return b"[" + b"\n,\r\n".join(chunks) + b"\n]"


def load_object(chunk: bytes) -> dict[str, Any] | None:
    """``chunk`` as a JSON object, or None (not JSON, or not an object)."""
    try:
        value = orjson.loads(chunk)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def renamed_counts(usage: Any, names: Mapping[str, str]) -> dict[str, int] | None:
    """Another surface's token counts in generateContent's ``usageMetadata`` names (``names``:
    theirs to ours), keeping only counts that are non-negative integers; None if none is."""
    if not isinstance(usage, Mapping):
        return None
    out = {
        ours: value
        for theirs, ours in names.items()
        if isinstance(value := usage.get(theirs), int) and not isinstance(value, bool) and value >= 0
    }
    return out or None


def is_complete_success(chunks: Sequence[bytes]) -> bool:
    """True only for an answer worth storing: every chunk parses, none is an error, the
    prompt was not blocked, and the last chunk ends a candidate with a normal finishReason."""
    return bool(chunks) and _complete([load_object(chunk) for chunk in chunks])


def summarize(chunks: Sequence[bytes]) -> tuple[bool, dict[str, Any] | None] | None:
    """One parse of an answer: (is it a complete success, its final usageMetadata), or None
    when a chunk is not a JSON object at all (a broken upstream answer)."""
    parsed = [load_object(chunk) for chunk in chunks]
    if not parsed or any(p is None for p in parsed):
        return None
    usage = next(
        (
            dict(p["usageMetadata"])
            for p in reversed(parsed)
            if p and isinstance(p.get("usageMetadata"), dict)
        ),
        None,
    )
    return _complete(parsed), usage


def _complete(parsed: Sequence[dict[str, Any] | None]) -> bool:
    if any(p is None or "error" in p for p in parsed):
        return False
    last = parsed[-1]
    assert last is not None
    feedback = last.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        return False
    candidates = last.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        return False
    first = candidates[0]
    return isinstance(first, dict) and first.get("finishReason") in COMPLETE_REASONS
