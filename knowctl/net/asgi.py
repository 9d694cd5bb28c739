"""The few raw-ASGI pieces the daemon needs, kept small and fast.

The gateway is a plain ASGI callable rather than a framework app: its routing is a parse of
the path (``knowctl.policy.paths``), and a framework's router and request objects would add
their cost to every call on the hot path for nothing the gateway uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from knowctl.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]

JSON = b"application/json; charset=UTF-8"

# Set in a request's scope when the HTTP transport refused it mid-way (knowctl.net.uvicorn_glue:
# a body over the process's buffer bound, 503, or too slow to arrive, 408) and answered the
# client itself: the app's receive() then gives http.disconnect and its sends are dropped.
SCOPE_TRANSPORT_STATUS = "knowctl.transport_status"


class BodyTooLarge(Exception):
    """The request body passed the configured limit."""


class ClientDisconnected(Exception):
    """The client went away before its body arrived, or the transport refused the body
    (``transport_status`` then tells with which status)."""


def transport_status(scope: Scope) -> int | None:
    """The status the transport answered this request with itself, if it did."""
    status: int | None = scope.get(SCOPE_TRANSPORT_STATUS)
    return status


async def read_body(receive: Receive, limit: int, declared_length: str | None) -> bytes:
    """The whole request body, refused early when it is, or grows, larger than ``limit``."""
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def body_pieces(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives, never held whole (an upload passed on). Raises
    ClientDisconnected when the client goes before its body ends (a truncated upload)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        piece = message.get("body", b"")
        if piece:
            yield piece
        if not message.get("more_body", False):
            return


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    headers: RawHeaders = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_json(
    send: Send, status: int, data: Any, extra_headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await respond(send, status, orjson.dumps(data), JSON, extra_headers)


async def respond_error(
    send: Send,
    status: int,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await respond(send, status, error_body(status, message, details=details), JSON, extra_headers)
