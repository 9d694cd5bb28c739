"""Cache keys, topic names and invalidation patterns (pure: no I/O, no clock).

A key is SHA-256 over canonical JSON (sorted keys, no whitespace) of every request field
that changes the answer, plus the model, its API family, the stream flag and the caller's
cache scope, behind a readable prefix: ``topic:{topic}:{hash}`` or ``gen:{model}:{hash}``.
Operators invalidate by glob over those readable keys, so keys and patterns share one small
alphabet with no character that Redis ``MATCH`` or a Redis Cluster hash tag treats specially.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

# Request fields that change the answer (GenerateContentRequest). Anything else in the body
# (e.g. Vertex's "labels") does not, and may differ between identical calls.
ANSWER_FIELDS = (
    "contents",
    "systemInstruction",
    "generationConfig",
    "tools",
    "toolConfig",
    "safetySettings",
    "cachedContent",
)

# Fields of an interaction or OpenAI chat body that do not change the answer (how it is
# delivered, kept or billed); every other field does.
NOT_ANSWER_FIELDS = frozenset(
    {
        "stream",
        "stream_options",
        "store",
        "background",
        "webhook_config",
        "labels",
        "service_tier",
        "user",
        "metadata",
        "model",  # named on the key already, with or without its models/ prefix
    }
)

# Scope shared by every topic answer: its content does not depend on who asked.
TOPIC_SCOPE = "topics"

TOPIC_MAX = 100
_TOPIC = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{TOPIC_MAX - 1}}}")

PATTERN_MAX = 256
MAX_WILDCARDS = 8
# Letters, digits and the separators keys use; '*' and '?' as globs. No '[', ']', '\\', '^',
# '{', '}' or spaces: Redis MATCH and Cluster hash tags would read them as syntax.
_PATTERN = re.compile(r"[A-Za-z0-9._:@*?-]+")


class BadPattern(ValueError):
    """An invalidation pattern that is not accepted; the message says why."""


def check_topic(topic: str) -> str:
    """``topic`` if it is a valid topic name, else ValueError with a clear message."""
    if not _TOPIC.fullmatch(topic):
        raise ValueError(
            f"invalid topic name {topic[: TOPIC_MAX + 10]!r}: use 1-{TOPIC_MAX} letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return topic


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace (orjson writes none)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def request_digest(
    payload: Mapping[str, Any],
    *,
    model: str,
    family: str,
    streaming: bool,
    scope: str,
    surface: str = "models",
    revision: str | None = None,
) -> str:
    """SHA-256 (hex) of everything that changes the answer to ``payload``: on other surfaces
    than generateContent's every field but NOT_ANSWER_FIELDS, and the API revision asked for."""
    if surface == "models":
        material = {name: payload[name] for name in ANSWER_FIELDS if name in payload}
        envelope: dict[str, Any] = {"m": model, "f": family, "s": streaming, "c": scope, "r": material}
    else:
        material = {name: value for name, value in payload.items() if name not in NOT_ANSWER_FIELDS}
        envelope = {"m": model, "f": family, "s": streaming, "c": scope, "r": material, "a": surface}
        if revision is not None:
            envelope["v"] = revision
    return hashlib.sha256(canonical(envelope)).hexdigest()


def cache_key(
    payload: Mapping[str, Any],
    *,
    model: str,
    family: str,
    streaming: bool,
    scope: str,
    topic: str | None = None,
    surface: str = "models",
    revision: str | None = None,
) -> str:
    """``topic:{topic}:{hash}`` when the call names a topic (validated), else ``gen:{model}:{hash}``."""
    digest = request_digest(
        payload,
        model=model,
        family=family,
        streaming=streaming,
        scope=scope,
        surface=surface,
        revision=revision,
    )
    if topic is not None:
        return f"topic:{check_topic(topic)}:{digest}"
    return f"gen:{model}:{digest}"


def topic_of(key: str) -> str | None:
    """The topic named by a ``topic:{topic}:{hash}`` key, else None."""
    if not key.startswith("topic:"):
        return None
    parts = key.split(":")
    return parts[1] if len(parts) == 3 and parts[1] else None


def check_pattern(pattern: str) -> str:
    """An invalidation glob (``*`` any run, ``?`` one character), or BadPattern saying why."""
    if not isinstance(pattern, str) or not pattern:
        raise BadPattern("the pattern must be a non-empty string, e.g. 'topic:photosynthesis:*'")
    if len(pattern) > PATTERN_MAX:
        raise BadPattern(f"the pattern is longer than {PATTERN_MAX} characters")
    if not _PATTERN.fullmatch(pattern):
        bad = sorted({c for c in pattern if not _PATTERN.fullmatch(c)})
        raise BadPattern(
            f"the pattern contains {''.join(bad)!r}: only letters, digits, '.', '_', ':', '@', '-' "
            "and the globs '*' and '?' are allowed"
        )
    if "**" in pattern:
        raise BadPattern("'**' is the same as '*': write one '*'")
    if pattern.count("*") + pattern.count("?") > MAX_WILDCARDS:
        raise BadPattern(f"the pattern has more than {MAX_WILDCARDS} wildcards")
    return pattern


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The compiled regular expression of a checked glob, matching whole keys."""
    parts = []
    for c in check_pattern(pattern):
        parts.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
    return re.compile("".join(parts), re.DOTALL)
