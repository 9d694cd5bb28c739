"""Token arithmetic of the provider quota: the estimate reserved before a call, and the
actual count that replaces it afterwards.

Pure code. The default estimate is the rule the simulator counts prompts with
(:mod:`knowctl.simulator.answers`): ceil(UTF-8 bytes of every text part / 4), at least 1,
so quota tests against the simulator are exact. Google's real tokenizer averages about 4
bytes per token on English text; the error is exported as a metric after each call.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, Literal

TokenMode = Literal["input", "total"]


def _content_texts(content: Any) -> Iterator[str]:
    if not isinstance(content, Mapping):
        return
    parts = content.get("parts")
    if not isinstance(parts, list):
        return
    for part in parts:
        if isinstance(part, Mapping):
            text = part.get("text")
            if isinstance(text, str):
                yield text


def prompt_texts(payload: Mapping[str, Any] | None) -> Iterator[str]:
    """Every text part of ``systemInstruction`` and ``contents`` (a list, or one Content)."""
    if not payload:
        return
    system = payload.get("systemInstruction", payload.get("system_instruction"))
    yield from _content_texts(system)
    contents = payload.get("contents")
    if isinstance(contents, Mapping):  # the REST API accepts a single Content too
        contents = [contents]
    if isinstance(contents, list):
        for content in contents:
            yield from _content_texts(content)


def prompt_bytes(payload: Mapping[str, Any] | None) -> int:
    return sum(len(text.encode("utf-8", "surrogatepass")) for text in prompt_texts(payload))


def input_estimate(payload: Mapping[str, Any] | None, bytes_per_token: float = 4.0) -> int:
    """ceil(prompt bytes / bytes_per_token), at least 1."""
    if not (math.isfinite(bytes_per_token) and bytes_per_token > 0):
        raise ValueError("bytes_per_token must be a positive number")
    nbytes = prompt_bytes(payload)
    if bytes_per_token == int(bytes_per_token):
        # Integer ceiling: exact for any size, where float division could round.
        divisor = int(bytes_per_token)
        return max(1, (nbytes + divisor - 1) // divisor)
    return max(1, math.ceil(nbytes / bytes_per_token))


def max_output_tokens(payload: Mapping[str, Any] | None) -> int | None:
    """``generationConfig.maxOutputTokens`` when it is a positive integer."""
    if not payload:
        return None
    config = payload.get("generationConfig", payload.get("generation_config"))
    if not isinstance(config, Mapping):
        return None
    value = config.get("maxOutputTokens", config.get("max_output_tokens"))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def reservation(
    input_tokens: int, payload: Mapping[str, Any] | None, mode: TokenMode, default_max_output: int
) -> int:
    """Tokens to reserve: the input count, plus the most the answer may take in total mode."""
    if mode == "input":
        return max(1, input_tokens)
    out = max_output_tokens(payload)
    return max(1, input_tokens) + (default_max_output if out is None else out)


def _count(usage: Mapping[str, Any], name: str) -> int | None:
    value = usage.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def actual_tokens(usage: Mapping[str, Any] | None, mode: TokenMode) -> int | None:
    """What the call really cost by ``usageMetadata``; None when the counts are missing.

    Input mode: ``promptTokenCount``. Total mode: ``totalTokenCount``, else the sum of the
    parts Google bills (prompt, candidates, thoughts, tool-use prompt).
    """
    if not isinstance(usage, Mapping):
        return None
    prompt = _count(usage, "promptTokenCount")
    if mode == "input":
        return prompt
    total = _count(usage, "totalTokenCount")
    if total is not None:
        return total
    if prompt is None:
        return None
    extra = ("candidatesTokenCount", "thoughtsTokenCount", "toolUsePromptTokenCount")
    return prompt + sum(_count(usage, name) or 0 for name in extra)
