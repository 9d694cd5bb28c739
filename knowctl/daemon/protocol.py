"""uvicorn's HTTP protocol, with two changes.

- Requests it cannot parse are answered in Google's error shape. uvicorn refuses malformed
  HTTP (a control character in a header, a broken request line) itself, before any ASGI app
  runs, with a text/plain 400; clients of a Gemini endpoint expect
  ``{"error": {"code", "message", "status"}}`` for every refusal.
- What one turn of the event loop writes leaves in one system call (``TurnTransport``).
  uvicorn writes a response's head and its body separately: joined, a cached answer costs
  one send() instead of two, and a stream's head reaches the client together with its
  first event (one wake-up of the client, not two).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from knowctl.errors import error_body

# Writes larger than this in all are passed on one by one: joining them would copy a large
# body to save one system call.
JOIN_LIMIT = 64 * 1024


class TurnTransport:
    """A transport whose writes are held until the end of the current loop turn, then sent
    in one write. Closing sends what is held first; everything else is the real transport's."""

    __slots__ = ("_held", "_loop", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)
        self._size += len(data)

    def writelines(self, lines: list[bytes]) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        held, size = self._held, self._size
        if not held:
            return
        self._held, self._size = [], 0
        if self._transport.is_closing():
            return  # the connection is gone: nobody is left to read it
        if len(held) == 1:
            self._transport.write(held[0])
        elif size <= JOIN_LIMIT:
            self._transport.write(b"".join(held))
        else:
            for data in held:
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held, self._size = [], 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        held = TurnTransport(transport, self.loop)
        super().connection_made(cast(asyncio.Transport, held))

    def send_400_response(self, msg: str) -> None:
        body = error_body(400, f"Malformed HTTP request: {msg}")
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json; charset=UTF-8\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
