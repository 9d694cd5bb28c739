"""The stored form of one cached answer (pure): a small binary header, then the chunks.

Binary rather than JSON so that a cache hit costs a ``struct`` unpack, not a JSON parse of
the answer. Layout (little-endian): magic ``KC1``, stored-at (float64 epoch seconds), chunk
count (uint32), model-version length (uint16), each chunk's length (uint32), the model
version (UTF-8), the chunks.
"""

from __future__ import annotations

import struct

from knowctl.daemon.contracts import Answer

MAGIC = b"KC1"
_HEAD = struct.Struct("<3sdIH")
MAX_CHUNKS = 1_000_000


def encode(answer: Answer, stored_at: float) -> bytes:
    version = (answer.model_version or "").encode()[:65535]
    lengths = struct.pack(f"<{len(answer.chunks)}I", *(len(c) for c in answer.chunks))
    head = _HEAD.pack(MAGIC, stored_at, len(answer.chunks), len(version))
    return b"".join((head, lengths, version, *answer.chunks))


def stored_at(blob: bytes) -> float | None:
    """When the entry was stored, without decoding the answer; None if ``blob`` is not one."""
    if len(blob) < _HEAD.size or blob[:3] != MAGIC:
        return None
    return float(_HEAD.unpack_from(blob)[1])


def decode(blob: bytes) -> tuple[float, Answer] | None:
    """(stored at, answer), or None for anything that is not a well-formed entry."""
    if len(blob) < _HEAD.size or blob[:3] != MAGIC:
        return None
    _, at, count, vlen = _HEAD.unpack_from(blob)
    if count == 0 or count > MAX_CHUNKS:
        return None
    offset = _HEAD.size + 4 * count
    if len(blob) < offset + vlen:
        return None
    lengths = struct.unpack_from(f"<{count}I", blob, _HEAD.size)
    version = blob[offset : offset + vlen].decode(errors="replace") or None
    offset += vlen
    if len(blob) != offset + sum(lengths):
        return None
    view = memoryview(blob)
    chunks = []
    for n in lengths:
        chunks.append(bytes(view[offset : offset + n]))
        offset += n
    return float(at), Answer(tuple(chunks), version)
