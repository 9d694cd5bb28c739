"""Embedding calls taken apart into their texts and put back together (pure).

Three shapes (docs/wire.md): Gemini ``:embedContent`` (the body is one item, the answer
``{"embedding": ...}``), ``:batchEmbedContents`` (``{"requests": [item...]}`` answered by
``{"embeddings": [...]}`` in order), and OpenAI's ``embeddings`` (``input``: texts, answered
by ``data[i].embedding``). Each item is keyed by everything that changes its vector, so a
later call embedding the same text the same way finds it, whichever shape it came in
(within one shape: the vectors' encodings differ between them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from knowctl.policy.cachekey import canonical
from knowctl.policy.paths import ApiCall, Surface
from knowctl.policy.tokens import prompt_texts

# Fields of a Gemini item that do not change its vector.
_NOT_VECTOR_FIELDS = frozenset({"model"})


@dataclass(frozen=True, slots=True)
class Batch:
    """One embedding call's items, in the caller's order."""

    items: tuple[Any, ...]  # a Gemini item (a request object) or an OpenAI text
    keys: tuple[str, ...]  # each item's cache key
    texts: tuple[str, ...]  # each item's text (what its token estimate counts)


def split(call: ApiCall, payload: Mapping[str, Any], scope: str) -> Batch | None:
    """The items of an embedding call, or None when it cannot be taken apart (then it goes
    upstream whole)."""
    model = call.model or ""
    if call.surface is Surface.OPENAI:
        texts = _openai_inputs(payload)
        if texts is None:
            return None
        shape = {k: payload.get(k) for k in ("dimensions", "encoding_format")}
        keys = tuple(_key(model, "openai", scope, {"t": text, **shape}) for text in texts)
        return Batch(tuple(texts), keys, tuple(texts))
    if call.action == "embedContent":
        items: list[Any] = [payload]
    else:
        requests = payload.get("requests")
        if not isinstance(requests, list) or not requests or not all(isinstance(r, dict) for r in requests):
            return None
        items = requests
    keys = tuple(
        _key(model, call.family.value, scope, {k: v for k, v in item.items() if k not in _NOT_VECTOR_FIELDS})
        for item in items
    )
    return Batch(tuple(items), keys, tuple(" ".join(_item_texts(item)) for item in items))


def _item_texts(item: Mapping[str, Any]) -> Iterator[str]:
    title = item.get("title")
    if isinstance(title, str):
        yield title
    yield from prompt_texts({"contents": item.get("content")})


def _openai_inputs(payload: Mapping[str, Any]) -> list[str] | None:
    value = payload.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None  # token arrays: embedded whole


def _key(model: str, family: str, scope: str, material: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(canonical({"m": model, "f": family, "c": scope, "r": material})).hexdigest()
    return f"emb:{model}:{digest}"


def request_for(call: ApiCall, payload: Mapping[str, Any], batch: Batch, indices: Sequence[int]) -> bytes:
    """The upstream body asking for the items at ``indices`` alone."""
    if call.surface is Surface.OPENAI:
        return orjson.dumps({**payload, "input": [batch.items[i] for i in indices]})
    if call.action == "embedContent":
        return orjson.dumps(payload)
    return orjson.dumps({**payload, "requests": [batch.items[i] for i in indices]})


def vectors_of(call: ApiCall, body: bytes, count: int) -> tuple[list[bytes], dict[str, Any] | None] | None:
    """Each item's embedding JSON from an upstream answer asked for ``count`` items, and the
    answer's usage (OpenAI's); None when the answer is not what was asked."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else None
    if call.surface is Surface.OPENAI:
        data = answer.get("data")
        if not isinstance(data, list) or len(data) != count:
            return None
        ordered = sorted(data, key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
        if not all(isinstance(d, dict) and "embedding" in d for d in ordered):
            return None
        return [orjson.dumps(d["embedding"]) for d in ordered], usage
    if call.action == "embedContent":
        one = answer.get("embedding")
        return ([orjson.dumps(one)], usage) if isinstance(one, dict) and count == 1 else None
    many = answer.get("embeddings")
    if not isinstance(many, list) or len(many) != count or not all(isinstance(e, dict) for e in many):
        return None
    return [orjson.dumps(e) for e in many], usage


def compose(call: ApiCall, payload: Mapping[str, Any], vectors: Sequence[bytes], usage: Any) -> bytes:
    """The caller's answer: every item's embedding in the order it asked for them."""
    if call.surface is Surface.OPENAI:
        parts = b",".join(
            b'{"object":"embedding","index":%d,"embedding":%s}' % (i, v) for i, v in enumerate(vectors)
        )
        tail = orjson.dumps(
            {"model": payload.get("model"), "usage": usage or {"prompt_tokens": 0, "total_tokens": 0}}
        )
        return b'{"object":"list","data":[' + parts + b"]," + tail[1:]
    if call.action == "embedContent":
        return b'{"embedding":' + vectors[0] + b"}"
    return b'{"embeddings":[' + b",".join(vectors) + b"]}"
