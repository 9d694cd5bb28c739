"""The OpenAI-compatible endpoint (``/v1beta/openai/...``): what a chat or embeddings body
asks and what its answers report (docs/wire.md). Errors there are OpenAI's shape, which the
``openai`` SDK reads: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson

from knowctl.policy.framing import load_object, renamed_counts

DONE = b"[DONE]"
COMPLETE_REASONS = frozenset({"stop", "length"})
# Google's status codes as OpenAI's error types (the SDK maps the HTTP status to its classes;
# the type is what scripts read).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_denied_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def model_name(payload: Mapping[str, Any] | None) -> str | None:
    """The ``model`` field, with or without a ``models/`` (Gemini API) or ``google/``
    (Vertex AI) prefix."""
    value = payload.get("model") if payload else None
    if not isinstance(value, str) or not value:
        return None
    return value.removeprefix("models/").removeprefix("google/") or None


def prompt_texts(payload: Mapping[str, Any] | None) -> Iterator[str]:
    """Every text of ``messages`` (string contents, and ``text`` parts of list contents)."""
    messages = payload.get("messages") if payload else None
    if not isinstance(messages, list):
        return
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    yield part["text"]


def max_output_tokens(payload: Mapping[str, Any] | None) -> int | None:
    if not payload:
        return None
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


def embedding_inputs(payload: Mapping[str, Any]) -> list[str] | None:
    """The texts of an embeddings body (``input``: a string or a list of strings); None for
    what cannot be cached per text (token arrays)."""
    value = payload.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


# OpenAI's usage fields, and their usageMetadata names.
_USAGE_NAMES = {
    "prompt_tokens": "promptTokenCount",
    "completion_tokens": "candidatesTokenCount",
    "total_tokens": "totalTokenCount",
}


def usage_metadata(usage: Any) -> dict[str, int] | None:
    """OpenAI's ``usage`` in generateContent's ``usageMetadata`` names."""
    return renamed_counts(usage, _USAGE_NAMES)


def summarize(chunks: Sequence[bytes]) -> tuple[bool, dict[str, int] | None] | None:
    """(is it a complete success, its usage in usageMetadata names) of a chat answer: one
    completion, or a stream's chunks (``[DONE]`` included, when it came); None when a chunk
    is not a JSON object."""
    done = bool(chunks) and chunks[-1] == DONE
    parsed = [load_object(chunk) for chunk in (chunks[:-1] if done else chunks)]
    if not parsed or any(p is None for p in parsed):
        return None
    usage = next((u for p in reversed(parsed) if p and (u := usage_metadata(p.get("usage")))), None)
    streamed = any(p and p.get("object") == "chat.completion.chunk" for p in parsed)
    if streamed and not done:
        return False, usage
    finished = [
        choice.get("finish_reason")
        for p in parsed
        if p and isinstance(p.get("choices"), list)
        for choice in p["choices"]
        if isinstance(choice, Mapping) and choice.get("finish_reason")
    ]
    complete = bool(finished) and all(f in COMPLETE_REASONS for f in finished)
    return complete and not any(p and "error" in p for p in parsed), usage


def render_sse(chunks: Sequence[bytes]) -> bytes:
    return b"".join(b"data: " + chunk + b"\n\n" for chunk in chunks)


def error_body(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": str(status)}})
