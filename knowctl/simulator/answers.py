"""The simulator's answers: deterministic text, token counts and stream chunks.

Pure code: no I/O, no clock, no randomness. The same request always gets the same bytes,
so the gateway's cache tests can compare answers exactly.

Token counting rule (the gateway's default estimator uses the same rule, so quota tests
can be exact):

- ``promptTokenCount`` = ceil(total UTF-8 bytes of every ``text`` part of ``contents`` and
  ``systemInstruction`` / 4), and at least 1;
- ``candidatesTokenCount`` = ceil(UTF-8 bytes of the answer text / 4);
- ``totalTokenCount`` = their sum. countTokens answers the prompt count with the same rule.

A context cache (``cachedContent``) counts its texts by the same rule once, when it is made;
a call that uses it adds that count to ``promptTokenCount`` and reports it as
``cachedContentTokenCount``, as Google does.

The answer text is a few dozen words chosen by a SHA-512 of the model and the prompt text.
``generationConfig.maxOutputTokens`` cuts it to ``4 * maxOutputTokens`` bytes (the answer is
ASCII, so no character is split) and the finish reason becomes ``MAX_TOKENS``. A prompt that
contains :data:`BLOCK_MARKER` gets no candidates and ``promptFeedback.blockReason = SAFETY``.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

BLOCK_MARKER = "[[blocked]]"
DEFAULT_CHUNKS = 4

# 64 words, so one digest byte picks one word with a mask (no modulo bias, no branching).
_WORDS: tuple[str, ...] = (
    "gateway", "quota", "cache", "model", "answer", "token", "window", "limit",
    "request", "stream", "chunk", "simulated", "deterministic", "reply", "prompt", "budget",
    "latency", "priority", "fallback", "refresh", "topic", "vertex", "gemini", "express",
    "sliding", "minute", "second", "header", "status", "retry", "delay", "backoff",
    "the", "a", "of", "and", "to", "in", "is", "for",
    "with", "on", "as", "by", "this", "that", "every", "each",
    "quickly", "carefully", "always", "never", "often", "again", "here", "there",
    "blue", "green", "small", "large", "early", "late", "bright", "quiet",
)  # fmt: skip
_MIN_WORDS = 24  # plus 0-15 more from the digest: "a few dozen words"


class BadRequest(ValueError):
    """The request cannot be answered; the message becomes a 400 INVALID_ARGUMENT."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One generateContent answer before it is shaped as one response or as stream chunks."""

    model: str
    text: str
    finish_reason: str
    prompt_tokens: int
    candidates_tokens: int
    response_id: str
    blocked: bool
    cached_tokens: int = 0  # the part of prompt_tokens a context cache supplied


@dataclass(frozen=True, slots=True)
class CachedPrefix:
    """What a context cache adds to a prompt: its tokens, a digest of its texts (the answer
    depends on them, as a model's would, without the cache keeping them) and whether they hold
    :data:`BLOCK_MARKER`."""

    tokens: int
    digest: str
    blocked: bool = False


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Invalid JSON payload received. {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("Invalid JSON payload received. The request body must be a JSON object.")
    return data


def _texts(content: Any, out: list[str]) -> None:
    """Collect the text parts of one ``Content`` (anything else in it is ignored)."""
    if not isinstance(content, dict):
        return
    parts = content.get("parts")
    if isinstance(parts, list):
        for part in parts:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)


def prompt_texts(request: dict[str, Any]) -> list[str]:
    """Every text part of ``contents`` and ``systemInstruction``; 400 when contents is missing."""
    contents = request.get("contents")
    if isinstance(contents, dict):  # the REST API accepts a single Content too
        contents = [contents]
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    out: list[str] = []
    system = request.get("systemInstruction", request.get("system_instruction"))
    if system is not None:
        _texts(system, out)
    for content in contents:
        if not isinstance(content, dict):
            raise BadRequest("* GenerateContentRequest.contents: each content must be an object")
        _texts(content, out)
    return out


def cache_texts(request: dict[str, Any]) -> list[str]:
    """The texts of a cachedContents create body: its ``systemInstruction`` and ``contents``,
    either of which may be absent, though not both (raises :class:`BadRequest`)."""
    contents = request.get("contents")
    if isinstance(contents, dict):
        contents = [contents]
    system = request.get("systemInstruction", request.get("system_instruction"))
    if contents is None and system is None:
        raise BadRequest("* CachedContent: contents or system_instruction must be set")
    if contents is not None and not isinstance(contents, list):
        raise BadRequest("* CachedContent.contents: must be a list of contents")
    out: list[str] = []
    if system is not None:
        _texts(system, out)
    for content in contents or ():
        if not isinstance(content, dict):
            raise BadRequest("* CachedContent.contents: each content must be an object")
        _texts(content, out)
    return out


def cached_prefix(texts: list[str]) -> CachedPrefix:
    """A cache of these texts, counted by the prompt rule."""
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    return CachedPrefix(prompt_tokens(texts), digest, any(BLOCK_MARKER in t for t in texts))


def token_count(nbytes: int) -> int:
    """Tokens for ``nbytes`` UTF-8 bytes of text: ceil(n / 4)."""
    return (nbytes + 3) // 4


def prompt_tokens(texts: list[str]) -> int:
    return max(1, token_count(sum(len(t.encode()) for t in texts)))


def max_output_tokens(request: dict[str, Any]) -> int | None:
    config = request.get("generationConfig", request.get("generation_config"))
    if config is None:
        return None
    if not isinstance(config, dict):
        raise BadRequest("* GenerateContentRequest.generation_config: must be an object")
    value = config.get("maxOutputTokens", config.get("max_output_tokens"))
    if value is None:
        return None
    # bool is an int in Python; JSON true is no token count.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest("* GenerateContentRequest.generation_config.max_output_tokens: must be >= 1")
    return value


def answer_text(model: str, texts: list[str]) -> str:
    """A few dozen deterministic words chosen by a hash of the model and the prompt text."""
    digest = hashlib.sha512(model.encode() + b"\x00" + "\x00".join(texts).encode()).digest()
    count = _MIN_WORDS + (digest[0] & 15)
    words = [_WORDS[b & 63] for b in digest[1 : 1 + count]]
    return "Simulated answer: " + " ".join(words) + "."


def truncate(text: str, limit: int | None) -> tuple[str, bool]:
    """The answer text cut to ``limit`` output tokens (4 bytes each; the answer is ASCII, so no
    character is split), and whether it was cut."""
    if limit is not None and len(text) > 4 * limit:
        return text[: 4 * limit], True
    return text, False


def response_id(model: str, body: bytes) -> str:
    """Deterministic stand-in for Google's responseId: a hash of the model and the raw request."""
    digest = hashlib.blake2b(model.encode() + b"\x00" + body, digest_size=16).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_answer(
    model: str, request: dict[str, Any], body: bytes, cached: CachedPrefix | None = None
) -> Answer:
    """The answer to a generateContent request (raises :class:`BadRequest`); ``cached``: the
    context cache it names, whose tokens join the prompt's and whose texts steer the answer."""
    texts = prompt_texts(request)
    limit = max_output_tokens(request)
    c_tokens = cached.tokens if cached is not None else 0
    p_tokens = prompt_tokens(texts) + c_tokens
    rid = response_id(model, body)
    if any(BLOCK_MARKER in t for t in texts) or (cached is not None and cached.blocked):
        return Answer(model, "", "", p_tokens, 0, rid, blocked=True, cached_tokens=c_tokens)
    text, cut = truncate(answer_text(model, [cached.digest, *texts] if cached else texts), limit)
    finish = "MAX_TOKENS" if cut else "STOP"
    return Answer(model, text, finish, p_tokens, token_count(len(text)), rid, False, c_tokens)


def usage(answer: Answer) -> dict[str, int]:
    if answer.blocked:
        out = {"promptTokenCount": answer.prompt_tokens, "totalTokenCount": answer.prompt_tokens}
    else:
        out = {
            "promptTokenCount": answer.prompt_tokens,
            "candidatesTokenCount": answer.candidates_tokens,
            "totalTokenCount": answer.prompt_tokens + answer.candidates_tokens,
        }
    if answer.cached_tokens:
        out["cachedContentTokenCount"] = answer.cached_tokens
    return out


def _blocked_response(answer: Answer) -> dict[str, Any]:
    return {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": usage(answer),
        "modelVersion": answer.model,
        "responseId": answer.response_id,
    }


def response(answer: Answer) -> dict[str, Any]:
    """The whole generateContent response."""
    if answer.blocked:
        return _blocked_response(answer)
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": answer.text}]},
                "finishReason": answer.finish_reason,
            }
        ],
        "usageMetadata": usage(answer),
        "modelVersion": answer.model,
        "responseId": answer.response_id,
    }


def split_chunks(text: str, n: int = DEFAULT_CHUNKS) -> list[str]:
    """Split ``text`` into at most ``n`` non-empty pieces at word boundaries; they join back to it."""
    if n <= 1 or not text:
        return [text]
    words = text.split(" ")
    if len(words) < n:
        n = len(words)
    per = len(words) / n
    pieces: list[str] = []
    start = 0
    for i in range(1, n + 1):
        end = round(per * i)
        piece = " ".join(words[start:end])
        # The space that joined two pieces goes at the start of the next piece.
        pieces.append(piece if start == 0 else " " + piece)
        start = end
    return pieces


def stream_chunks(answer: Answer, n: int = DEFAULT_CHUNKS) -> list[dict[str, Any]]:
    """streamGenerateContent chunks: only the last has finishReason and usageMetadata."""
    if answer.blocked:
        return [_blocked_response(answer)]
    pieces = split_chunks(answer.text, n)
    chunks: list[dict[str, Any]] = [
        {
            "candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}}],
            "modelVersion": answer.model,
            "responseId": answer.response_id,
        }
        for piece in pieces
    ]
    last = chunks[-1]
    last["candidates"][0]["finishReason"] = answer.finish_reason
    last["usageMetadata"] = usage(answer)
    return chunks


def count_tokens_request(request: dict[str, Any]) -> int:
    """countTokens accepts ``contents`` or a whole ``generateContentRequest`` (``model`` is ignored)."""
    inner = request.get("generateContentRequest", request.get("generate_content_request"))
    if isinstance(inner, dict):
        return prompt_tokens(prompt_texts(inner))
    return prompt_tokens(prompt_texts(request))


def billable_characters(request: dict[str, Any]) -> int:
    """Vertex's totalBillableCharacters: the prompt's characters, whitespace excluded."""
    inner = request.get("generateContentRequest")
    texts = prompt_texts(inner if isinstance(inner, dict) else request)
    return sum(len(t) - sum(c.isspace() for c in t) for t in texts)


DEFAULT_DIMENSIONS = 8  # small, so test answers stay short
MAX_DIMENSIONS = 3072  # gemini-embedding-001's full size


def output_dimensionality(value: Any, field: str = "outputDimensionality") -> int:
    """The vector length asked for (absent: :data:`DEFAULT_DIMENSIONS`)."""
    if value is None:
        return DEFAULT_DIMENSIONS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIMENSIONS:
        raise BadRequest(f"* EmbedContentRequest.{field}: must be an integer in [1, {MAX_DIMENSIONS}]")
    return value


def embed_item_text(request: dict[str, Any]) -> str:
    """One embedContent item's text as the gateway estimates it: title and text parts, joined."""
    texts: list[str] = []
    title = request.get("title")
    if isinstance(title, str):
        texts.append(title)
    _texts(request.get("content"), texts)
    return " ".join(texts)


def embedding_vector(model: str, texts: list[str], dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """``dimensions`` deterministic floats in [-1, 1) for a text: the same text, the same vector.

    The first block is the SHA-256 of the model and the texts (so the first eight values are
    what the simulator always answered); further blocks hash the first with a counter."""
    seed = hashlib.sha256(model.encode() + b"\x00" + "\x00".join(texts).encode()).digest()
    stream = bytearray(seed)
    block = 1
    while len(stream) < 4 * dimensions:
        stream += hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        block += 1
    return [
        round(int.from_bytes(stream[i : i + 4], "big") / 2**31 - 1.0, 6) for i in range(0, 4 * dimensions, 4)
    ]


def embedding(model: str, request: dict[str, Any]) -> list[float]:
    """The vector for one embedContent request, ``outputDimensionality`` long (raises
    :class:`BadRequest`)."""
    texts: list[str] = []
    _texts(request.get("content"), texts)
    # Vertex (express too) nests the options in embedContentConfig; the Gemini API does not.
    nested = request.get("embedContentConfig")
    options = nested if isinstance(nested, dict) else request
    dims = output_dimensionality(options.get("outputDimensionality", options.get("output_dimensionality")))
    return embedding_vector(model, texts, dims)
