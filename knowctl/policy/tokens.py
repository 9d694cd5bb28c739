"""Token arithmetic of the provider quota: the estimate reserved before a call, and the
actual count that replaces it afterwards.

Pure code. The default estimate is the rule the simulator counts prompts with
(:mod:`knowctl.simulator.answers`): ceil(UTF-8 bytes of every text part / 4), at least 1,
so quota tests against the simulator are exact. Google's real tokenizer averages about 4
bytes per token on English text; the error is exported as a metric after each call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from knowctl.policy.wire import interactions, openai

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


def surface_texts(payload: Mapping[str, Any] | None, surface: str = "models") -> Iterator[str]:
    """The prompt's texts in the shape of its API surface (knowctl.policy.paths.Surface)."""
    if surface == "interactions":
        return interactions.prompt_texts(payload)
    if surface == "openai":
        return openai.prompt_texts(payload)
    return prompt_texts(payload)


def prompt_bytes(payload: Mapping[str, Any] | None, surface: str = "models") -> int:
    return sum(len(text.encode("utf-8", "surrogatepass")) for text in surface_texts(payload, surface))


def input_estimate(
    payload: Mapping[str, Any] | None, bytes_per_token: float = 4.0, surface: str = "models"
) -> int:
    """ceil(prompt bytes / bytes_per_token), at least 1."""
    if not (math.isfinite(bytes_per_token) and bytes_per_token > 0):
        raise ValueError("bytes_per_token must be a positive number")
    nbytes = prompt_bytes(payload, surface)
    if bytes_per_token == int(bytes_per_token):
        # Integer ceiling: exact for any size, where float division could round.
        divisor = int(bytes_per_token)
        return max(1, (nbytes + divisor - 1) // divisor)
    return max(1, math.ceil(nbytes / bytes_per_token))


def texts_estimate(texts: Iterable[str], bytes_per_token: float = 4.0) -> int:
    """input_estimate of bare texts (an embedding call's): ceil(bytes / bytes_per_token)."""
    nbytes = sum(len(text.encode("utf-8", "surrogatepass")) for text in texts)
    return max(1, math.ceil(nbytes / bytes_per_token))


def max_output_tokens(payload: Mapping[str, Any] | None, surface: str = "models") -> int | None:
    """``generationConfig.maxOutputTokens`` (or the surface's own cap) when it is a positive
    integer."""
    if surface == "interactions":
        return interactions.max_output_tokens(payload)
    if surface == "openai":
        return openai.max_output_tokens(payload)
    if not payload:
        return None
    config = payload.get("generationConfig", payload.get("generation_config"))
    if not isinstance(config, Mapping):
        return None
    value = config.get("maxOutputTokens", config.get("max_output_tokens"))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


@dataclass(frozen=True, slots=True)
class Reservation:
    """Tokens reserved for one call, and how many more its answer may still take (the most
    by which it can take its windows over their limits: exported, and bounded)."""

    tokens: int
    unreserved: int = 0
    requests: int = 1  # what the call counts in request windows (a batch of N embeddings: N)


def reservation(
    input_tokens: int,
    payload: Mapping[str, Any] | None,
    mode: TokenMode,
    default_max_output: int,
    *,
    likely_output: int | None = None,
    cap: int | None = None,
    surface: str = "models",
    requests: int = 1,
) -> Reservation:
    """Tokens to reserve: the input count, plus in total mode what the answer will likely
    take: the most it may take (``maxOutputTokens``, else ``default_max_output``), or less
    when answers of the model have been seen to take less (``likely_output``), and never
    more than ``cap`` in all (the window's limit at the call's priority), so a call is
    admissible whenever its input fits. The rest is reconciled from the real usage after."""
    tokens = max(1, input_tokens)
    if mode == "input":
        return Reservation(tokens, requests=requests)
    explicit = max_output_tokens(payload, surface)
    most = default_max_output if explicit is None else explicit
    output = most if likely_output is None else min(most, likely_output)
    if cap is not None:
        output = max(0, min(output, cap - tokens))
    return Reservation(tokens + output, most - output, requests)


class OutputHighMark:
    """What answers of one model take, learned from their usage: a high mark that rises at
    once to a longer answer and sinks slowly (a twentieth of the gap per answer) towards
    shorter ones, so reservations cover nearly every answer without holding a model's
    whole maximum."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: int | None = None

    def observe(self, output_tokens: int) -> None:
        if self.value is None or output_tokens >= self.value:
            self.value = output_tokens
        else:
            self.value -= (self.value - output_tokens) // 20


def output_tokens(usage: Mapping[str, Any] | None) -> int | None:
    """What the answer itself took (everything billed beyond the prompt), by usageMetadata."""
    if not isinstance(usage, Mapping):
        return None
    total = actual_tokens(usage, "total")
    prompt = _count(usage, "promptTokenCount")
    if total is None or prompt is None:
        return None
    return max(0, total - prompt)


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
