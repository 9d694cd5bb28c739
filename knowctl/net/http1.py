"""A lean HTTP/1.1 client for the upstream: pooled keep-alive connections, answers passed
on as they arrive, on asyncio protocols with httptools' parser (the C parser uvicorn uses).

Why not aiohttp on this path: the same call costs aiohttp two to three times the CPU of this
client (its cookie, tracing, redirect and URL machinery runs on every call; the gateway needs
none of it); pyreqwest is at the line. Figures and the decision: docs/architecture.md,
"Measured choices" (``bench/libraries.py``). The CDN purges
(knowctl.daemon.topics.cdn) use it too.

What it does: GET and POST with a body, HTTP/1.1 only (Google's endpoints speak it), TLS
with certificate and host checks, one deadline per call for the whole exchange (connect
within ``connect_timeout``), bodies by Content-Length, chunked or until close, a bounded
buffer per answer (reading pauses while the caller is behind), an HTTP proxy per origin
(``Origin.proxy``: CONNECT for https, its tunnel kept alive; absolute-form for http, a
connection per call, as such proxies close them unannounced). What it leaves out: proxy
credentials, redirects (the gateway forwards answers as they are), compression (it asks for
identity).

Errors: :class:`ConnectFailed` (no connection), :class:`Timeout` (the deadline passed),
:class:`Broken` (the connection broke or the answer is not HTTP). A connection is reused
only after a complete answer that allows keep-alive; anything else closes it.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

# Reading pauses while an answer holds this much that its caller has not taken yet.
HIGH_WATER = 256 * 1024
# Idle connections older than this are closed rather than reused (servers drop them too).
IDLE_S = 30.0
# The most a proxy may say in answer to CONNECT before the tunnel opens.
MAX_TUNNEL_HEAD = 16 * 1024


class HttpError(Exception):
    pass


class ConnectFailed(HttpError):
    """No connection to the origin (refused, unreachable, TLS refused, DNS)."""


class Timeout(HttpError):
    """The call's deadline passed."""


class Broken(HttpError):
    """The connection broke, or the answer is not valid HTTP."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    # The HTTP proxy calls to this origin go through (an http:// origin): https through a
    # CONNECT tunnel, with TLS to the origin itself checked as without one; http as an
    # absolute-form request to the proxy. Connections through it are pooled apart.
    proxy: Origin | None = None

    def via(self, proxy: Origin | None) -> Origin:
        """This origin, reached through ``proxy`` (None: directly)."""
        return Origin(self.scheme, self.host, self.port, proxy)

    @classmethod
    def parse(cls, url: str) -> Origin:
        return cls.split(url)[0]

    @classmethod
    def split(cls, url: str) -> tuple[Origin, str]:
        """The origin of an http(s) URL and its path ("" when it has none)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port), parts.path

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class Response:
    """One answer: status and headers at once, the body as it arrives."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers  # (lower-case name, value), as received

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body piece by piece, as it arrives."""
        conn = self._conn
        while True:
            piece = await conn.next_piece()
            if piece is None:
                return
            yield piece

    async def read(self) -> bytes:
        pieces = []
        while (piece := await self._conn.next_piece()) is not None:
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._pieces: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.head_done = False
        self.complete = False
        self._until_close = False  # the body ends with the connection (no length, not chunked)
        self._keep_alive = False
        self.error: HttpError | None = None
        self.idle_since = 0.0
        # Not kept alive: a proxy relaying plain http may close after any answer unannounced.
        self.single_use = False
        self._writable: asyncio.Future[None] | None = None  # set while the transport is full

    # --- protocol callbacks -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Broken("the upstream tried to switch protocols"))
        except httptools.HttpParserError as exc:
            self._fail(Broken(f"the upstream's answer is not valid HTTP: {exc}"))

    def eof_received(self) -> bool | None:
        if self.head_done and self._until_close and not self.complete:
            self.complete = True  # a body delimited by the end of the connection ends here
            self._wake()
        elif not self.complete:
            self._fail(Broken("the upstream closed the connection mid-answer"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.complete:
            self._fail(Broken(f"the upstream connection broke: {exc or 'closed'}"))
        self.error = self.error or Broken("connection closed")
        self.resume_writing()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103): the real one follows
            self.headers = []
            return
        self.status = status
        self.head_done = True
        # Asked now: once the message is complete the parser has moved on to the next one.
        self._keep_alive = self._parser.should_keep_alive()
        names = {name for name, _ in self.headers}
        self._until_close = (
            b"content-length" not in names and b"transfer-encoding" not in names and status not in (204, 304)
        )
        self._wake()
        self.resume_writing()  # a streamed body stops at an answer: no wait for room to send it

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self._wake()

    # --- the caller's side --------------------------------------------------------------------
    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.status, self.headers, self.head_done, self.complete = 0, [], False, False
        self._until_close = False
        self.transport.write(request)

    async def write(self, piece: bytes) -> None:
        """Send part of a streamed request body, waiting while the upstream is behind."""
        if self.error is not None:
            raise self.error
        assert self.transport is not None
        self.transport.write(piece)
        while self._writable is not None and self.error is None and not self.head_done:
            await asyncio.shield(self._writable)

    async def head(self) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    async def next_piece(self) -> bytes | None:
        while not self._pieces:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self._wait()
        piece = self._pieces.popleft()
        self._buffered -= len(piece)
        if self._paused and self._buffered <= HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return piece

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and not self.single_use
            and not self._until_close
            and self.error is None
            and not self._pieces
            and self._keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def abort(self, error: HttpError) -> None:
        self._fail(error)
        if self.transport is not None:
            self.transport.abort()

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: HttpError) -> None:
        if self.error is None:
            self.error = error
        self._wake()


class Pool:
    """Keep-alive connections per origin, at most ``max_connections`` open in all."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout: float,
        timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: for https origins; the system's CAs with host checks when not given."""
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._idle: dict[Origin, collections.deque[_Connection]] = {}
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._tls = tls
        self._closed = False

    def request(
        self, method: str, origin: Origin, target: str, headers: dict[str, str], body: bytes
    ) -> _Exchange:
        """``async with pool.request(...) as response``: send one call, read its answer in
        the block. Raises HttpError."""
        return _Exchange(self, origin, _request_bytes(method, origin, target, headers, body))

    def request_streamed(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: dict[str, str],
        length: int,
        body: AsyncIterator[bytes],
    ) -> _Exchange:
        """``request`` with a body of ``length`` bytes sent as ``body`` yields it, never held
        whole (an upload). The deadline runs from the last piece sent, not from the start.
        A body that ends short breaks the connection (the upstream sees it truncated) and
        raises what the iterator raised, or Broken."""
        head = _request_bytes(method, origin, target, {**headers, "content-length": str(length)}, b"", False)
        return _Exchange(self, origin, head, (length, body))

    def _expire(self, conn: _Connection) -> None:
        conn.abort(Timeout(f"no complete answer within {self._timeout:g}s"))

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                conn = idle.popleft()
                conn.abort(Broken("the client is closed"))
        self._idle.clear()

    async def _acquire(self, origin: Origin, deadline: float) -> _Connection:
        if self._closed:
            raise ConnectFailed("the upstream client is closed")
        conn = self._take_idle(origin)
        if conn is not None:
            return conn
        while self._open >= self._max and not self._evict_idle():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise Timeout("no free upstream connection before the deadline") from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            conn = self._take_idle(origin)
            if conn is not None:
                return conn
        self._open += 1
        try:
            return await self._connect(origin, deadline)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self, origin: Origin, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        wait = min(self._connect_timeout, max(0.0, deadline - loop.time()))
        proxy = origin.proxy
        try:
            async with asyncio.timeout(wait):
                if proxy is None:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(loop), origin.host, origin.port, ssl=tls
                    )
                elif tls is None:  # plain http: every request goes to the proxy, in absolute form
                    _, conn = await loop.create_connection(lambda: _Connection(loop), proxy.host, proxy.port)
                    conn.single_use = True
                else:
                    sock = await _tunnel(loop, proxy, origin)
                    _, conn = await loop.create_connection(
                        lambda: _Connection(loop), sock=sock, ssl=tls, server_hostname=origin.host
                    )
        except TimeoutError as exc:
            raise Timeout(f"connecting to {origin.host}:{origin.port} took over {wait:g}s") from exc
        except (OSError, ssl.SSLError) as exc:
            via = f" through the proxy {proxy.host}:{proxy.port}" if proxy is not None else ""
            raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port}{via}: {exc}") from exc
        return conn

    def _take_idle(self, origin: Origin) -> _Connection | None:
        """A kept-alive connection to ``origin`` still fit for reuse; the unfit are closed."""
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been dropped
            if conn.reusable and now - conn.idle_since < IDLE_S:
                return conn
            self._forget(conn)
        return None

    def _evict_idle(self) -> bool:
        """Close one idle connection (of any origin) to make room; False if there is none."""
        for idle in self._idle.values():
            if idle:
                self._forget(idle.popleft())
                return True
        return False

    def _release(self, origin: Origin, conn: _Connection) -> None:
        if conn.reusable and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(origin, collections.deque()).append(conn)
        else:
            self._forget(conn)
        self._wake_one()

    def _forget(self, conn: _Connection) -> None:
        self._open -= 1
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.close()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class _Exchange:
    """One call on a pooled connection (a class, not a generator: it runs on every call)."""

    __slots__ = ("_body", "_conn", "_origin", "_pool", "_request", "_timer")

    def __init__(
        self,
        pool: Pool,
        origin: Origin,
        request: bytes,
        body: tuple[int, AsyncIterator[bytes]] | None = None,
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._request = request
        self._body = body
        self._conn: _Connection | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> Response:
        pool = self._pool
        loop = asyncio.get_running_loop()
        deadline = loop.time() + pool._timeout
        conn = self._conn = await pool._acquire(self._origin, deadline)
        self._timer = loop.call_at(deadline, pool._expire, conn)
        conn.send(self._request)
        try:
            if self._body is not None:
                await self._stream(conn, *self._body)
            await conn.head()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return Response(conn)

    async def _stream(self, conn: _Connection, length: int, body: AsyncIterator[bytes]) -> None:
        pool, loop = self._pool, asyncio.get_running_loop()
        sent = 0
        async for piece in body:
            if sent + len(piece) > length:
                raise Broken(f"the request body is longer than its {length} bytes")
            await conn.write(piece)
            sent += len(piece)
            assert self._timer is not None
            self._timer.cancel()  # progress: the deadline runs from the last piece
            self._timer = loop.call_at(loop.time() + pool._timeout, pool._expire, conn)
            if conn.head_done:  # the upstream answered before the whole body: it wants no more
                if sent < length:
                    conn.single_use = True  # the rest was never sent: the connection cannot go on
                return
        if sent < length:
            raise Broken(f"the request body ended after {sent} of its {length} bytes")

    async def __aexit__(self, kind: object, error: object, tb: object) -> None:
        conn = self._conn
        assert conn is not None and self._timer is not None
        self._timer.cancel()
        if error is not None or not conn.complete:
            conn.abort(Broken("the call was abandoned"))
        self._pool._release(self._origin, conn)


async def _tunnel(loop: asyncio.AbstractEventLoop, proxy: Origin, origin: Origin) -> socket.socket:
    """A socket connected to ``origin`` through ``proxy``'s CONNECT (RFC 9110 9.3.6), ready for
    TLS to the origin."""
    found = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = found[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, address)
        authority = origin.host_header if ":" in origin.host_header else f"{origin.host_header}:{origin.port}"
        await loop.sock_sendall(sock, f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            piece = await loop.sock_recv(sock, 4096)
            if not piece or len(head) > MAX_TUNNEL_HEAD:
                raise OSError("the proxy closed the connection before answering CONNECT")
            head += piece
        line = head.split(b"\r\n", 1)[0]
        status = line.split()
        if len(status) < 2 or status[1] != b"200":
            raise OSError(f"the proxy refused CONNECT: {line.decode('latin-1')}")
        if head.index(b"\r\n\r\n") + 4 != len(head):
            raise OSError("the proxy sent bytes after its CONNECT answer")
    except BaseException:
        sock.close()
        raise
    return sock


def _request_bytes(
    method: str, origin: Origin, target: str, headers: dict[str, str], body: bytes, length: bool = True
) -> bytes:
    if any(c in target for c in " \r\n"):
        raise Broken(f"refusing to send the malformed request target {target!r}")
    if origin.proxy is not None and origin.scheme == "http":
        target = f"http://{origin.host_header}{target}"  # absolute form, for the proxy
    lines = [f"{method} {target} HTTP/1.1", f"host: {origin.host_header}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise Broken(f"refusing to send the malformed header {name!r}")
        lines.append(f"{name}: {value}")
    if length and (body or method == "POST"):
        lines.append(f"content-length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head
