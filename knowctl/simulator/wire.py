"""How the simulator puts answers on the wire: SSE and JSON-array streams, and dropped connections."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from knowctl.net.asgi import JSON, Receive, Send

SSE = b"text/event-stream"
_SSE_HEADERS = [(b"content-type", SSE), (b"cache-control", b"no-cache")]
_ARRAY_HEADERS = [(b"content-type", JSON)]
_SSE_QUERY = (b"alt=sse", b"%24alt=sse", b"$alt=sse")


def is_sse(query: bytes) -> bool:
    """Whether a stream call asked for server-sent events (``alt=sse``) rather than a JSON array."""
    return b"alt=sse" in query and any(p in _SSE_QUERY for p in query.split(b"&"))


async def send_chunks(
    send: Send, chunks: list[dict[str, Any]], sse: bool, chunk_delay_ms: float, upto: int = -1
) -> None:
    """Send the chunks, one ASGI message each; with ``upto`` >= 0, stop after that many, open."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS if sse else _ARRAY_HEADERS}
    )
    delay = chunk_delay_ms / 1000
    last = len(chunks) - 1 if upto < 0 else -1  # a cut stream never sends its end
    for i, chunk in enumerate(chunks):
        if i == upto:
            return
        if i and delay > 0:
            await asyncio.sleep(delay)
        data = orjson.dumps(chunk)
        if sse:
            piece = b"data: " + data + b"\r\n\r\n"
        else:
            piece = (b"[" if i == 0 else b"\n,\r\n") + data + (b"\n]" if i == last else b"")
        await send({"type": "http.response.body", "body": piece, "more_body": i != last})


async def drop_connection(send: Send, receive: Receive) -> None:
    """Close the client's connection without a (complete) answer.

    ASGI has no message for this, so reach the server's transport through uvicorn's bound
    ``send`` and abort it (a TCP reset). Mounted elsewhere, raise: the caller sees a failure.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        raise ConnectionResetError("knowctl simulator: injected connection drop")
    transport.abort()
    # Wait until the server has seen the loss, or it would answer a 500 on our behalf.
    async with asyncio.timeout(5):
        while (await receive())["type"] != "http.disconnect":
            pass


async def wait_disconnect(receive: Receive) -> None:
    """Hold the request, answering nothing, until the client goes."""
    while (await receive())["type"] != "http.disconnect":
        pass
