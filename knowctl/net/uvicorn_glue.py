"""uvicorn glue, one cohesive module: the only code that knows uvicorn's internals (its HTTP
protocol subclassed with the gateway's changes and transport defences, its server and config).

- Requests it cannot parse are answered in Google's error shape. uvicorn refuses malformed
  HTTP (a control character in a header, a broken request line) itself, before any ASGI app
  runs, with a text/plain 400; clients of a Gemini endpoint expect
  ``{"error": {"code", "message", "status"}}`` for every refusal.
- What one turn of the event loop writes leaves in one system call (``TurnTransport``).
  uvicorn writes a response's head and its body separately: joined, a cached answer costs
  one send() instead of two, and a stream's head reaches the client together with its
  first event (one wake-up of the client, not two).
- What a client can make one process hold is bounded (``TransportLimits``): the request
  body bytes held by all connections together (503 past it), the size of a request head
  (400), the time a head and a body may take to arrive (408), and the connections of one
  client address (429). Idle keep-alive connections are closed by uvicorn's own
  timeout_keep_alive.
- A refused request is answered, then the connection closes *lingering*, as nginx does:
  our side is shut for writing and what the client still sends is read and dropped for a
  few seconds. A socket closed with unread bytes answers the client's next segment with a
  reset, and a client still sending its body then fails on the write and never reads the
  answer. Answers the app sends with ``connection: close`` before the body is in linger
  the same way.

All knowledge of uvicorn's private internals lives in this module (uvicorn is pinned below
its next minor version, and tests/unit/test_uvicorn_contract.py names what breaks if one of
these changes). It relies on (uvicorn 0.55, ``uvicorn.protocols.http.httptools_impl``):
the parser callbacks of ``HttpToolsProtocol`` (``on_message_begin``, ``on_headers_complete``, ``on_body``,
``on_message_complete``) and its ``on_response_complete``, ``data_received``,
``connection_made``/``connection_lost``, ``shutdown`` and ``send_400_response``; its
attributes ``transport``, ``flow`` (``FlowControl``), ``cycle``, ``pipeline``, ``headers``,
``client``, ``loop`` and ``server_state``; ``RequestResponseCycle``'s ``scope``,
``response_started``, ``response_complete``, ``disconnected``,
``waiting_for_100_continue`` and ``message_event``; and ``STATUS_LINE``. ``on_body`` appends
to ``cycle.body`` and pauses reading once that passes ``flow_control.HIGH_WATER_LIMIT``
(64 KiB) until the app's next ``receive()``, so the bytes counted in ``on_body`` are the
bytes the process holds: the rest of a body waits in the kernel's socket buffer. Of the server:
``Server.handle_exit`` and ``Server._captured_signals`` (:class:`StoppingServer`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess

from knowctl.errors import error_body, retry_after_header, retry_info
from knowctl.net.asgi import SCOPE_TRANSPORT_STATUS
from knowctl.policy.callers import IpNetwork, is_trusted, parse_address

log = logging.getLogger("knowctl.transport")

# Writes larger than this in all are passed on one by one: joining them would copy a large
# body to save one system call.
JOIN_LIMIT = 64 * 1024

# Header fields one request may carry (Apache's LimitRequestFields). uvicorn keeps each as
# two bytes objects in a tuple, ~100 bytes for a 4-byte field: the head's byte bound alone
# would let tiny fields take ~25 times their size.
MAX_HEADER_FIELDS = 100

# How long a refused connection reads and drops what its client still sends before it
# closes, at most (nginx's lingering_timeout is 5 s). A connection over its address's cap is
# not counted while it lingers, so it lingers only long enough for a request head.
LINGER_S = 5.0
LINGER_OVER_CAP_S = 1.0

# Retry-After of the refusals that pass with the load (503, 429), in seconds.
RETRY_AFTER_S = 1.0

# Where a connection is in the request it is reading.
IDLE, HEAD, BODY = 0, 1, 2


@dataclass(slots=True, eq=False)
class TransportLimits:
    """The transport bounds of one daemon process and the counts they are kept against;
    every connection of the process shares one instance (each worker process has its own)."""

    max_buffered_bytes: int
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    max_connections_per_client: int  # 0: no cap
    exempt: tuple[IpNetwork, ...] = ()
    max_ws_message_bytes: int = 16 * 1024 * 1024  # one WebSocket message (a Live frame)
    buffered: int = 0  # request body bytes held now, all connections together
    connections: dict[str, int] = field(default_factory=dict)  # open connections by peer address

    def exempts(self, peer: str) -> bool:
        """Whether this peer is one of the gateway's own proxies (every visitor comes
        through them, so their connections are not one client's)."""
        if not self.exempt:
            return False
        address = parse_address(peer)
        return address is not None and is_trusted(address, self.exempt)


def protocol_factory(limits: TransportLimits) -> Callable[..., GatewayHttpProtocol]:
    """What ``uvicorn.Config(http=...)`` takes: the protocol with this process's limits. A
    partial of module-level names, so worker processes receive it pickled (each then counts
    on its own copy)."""
    return functools.partial(GatewayHttpProtocol, limits=limits)


class TurnTransport:
    """A transport whose writes are held until the end of the current loop turn, then sent
    in one write. Closing sends what is held first; everything else is the real transport's.

    ``on_close``, when set, is asked first by ``close()``; it returns True when it took the
    close over (a lingering close)."""

    __slots__ = ("_eof", "_held", "_loop", "_size", "_transport", "on_close")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0
        self._eof = False
        self.on_close: Callable[[], bool] | None = None

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
        if self._eof or self._transport.is_closing():
            return  # the connection is gone, or our side of it is shut: nobody reads this
        if len(held) == 1:
            self._transport.write(held[0])
        elif size <= JOIN_LIMIT:
            self._transport.write(b"".join(held))
        else:
            for data in held:
                self._transport.write(data)

    def write_eof(self) -> None:
        self.flush()
        self._eof = True
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        if self.on_close is not None and self.on_close():
            return
        self._transport.close()

    def abort(self) -> None:
        self._held, self._size = [], 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# A WebSocket that answers no ping within this long is dead (a Live client gone silently).
WS_PING_INTERVAL_S = 20.0

# The parser callbacks below call uvicorn's own by name, not through super(): they run several
# times for every request, and a super object each time costs about 0.2 µs.
_base = HttpToolsProtocol


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: TransportLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = limits
        self._stage = IDLE
        self._peer: str | None = None  # counted in limits.connections under this address
        self._held = 0  # body bytes this connection holds, counted in limits.buffered
        self._head_bytes = 0  # bytes of earlier reads while the current head is incomplete
        self._read_size = 0  # bytes of the read being parsed
        self._idle_since = 0.0  # loop time of the opening, the last answer's end or a head's start
        self._timer: asyncio.TimerHandle | None = None  # head, body or linger deadline
        self._refused = False  # answered by us (or closing): what arrives is dropped
        self._plain_close = False  # set once a close must not linger (lost, shutting down)

    # --- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        held = TurnTransport(transport, self.loop)
        held.on_close = self._linger_on_close
        super().connection_made(cast(asyncio.Transport, held))
        limits = self._limits
        cap = limits.max_connections_per_client
        peer = self.client[0] if self.client else None
        if cap and peer is not None and not limits.exempts(peer):
            count = limits.connections.get(peer, 0)
            if count >= cap:
                self._refuse(
                    429,
                    f"Too many concurrent connections from {peer}: at most {cap} are allowed.",
                    retry_after=RETRY_AFTER_S,
                    linger=LINGER_OVER_CAP_S,
                )
                return
            limits.connections[peer] = count + 1
            self._peer = peer
        # uvicorn arms no timer before a connection's first request: this one closes a
        # connection that never sends a whole head.
        self._idle_since = self.loop.time()
        self._timer = self.loop.call_at(self._idle_since + limits.header_timeout, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._plain_close = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release()
        peer = self._peer
        if peer is not None:
            self._peer = None
            connections = self._limits.connections
            left = connections[peer] - 1
            if left:
                connections[peer] = left
            else:
                del connections[peer]
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and dropped
        self._read_size = len(data)
        _base.data_received(self, data)
        stage = self._stage
        if stage == IDLE or self._refused or self._plain_close:  # (closing: also upgraded)
            return  # the usual case: the whole request arrived in this read
        if stage == HEAD:
            self._head_bytes += len(data)
            limits = self._limits
            if self._head_bytes > limits.max_header_bytes:
                self._refuse(400, f"The request head is larger than {limits.max_header_bytes} bytes.")
            elif len(self.headers) > MAX_HEADER_FIELDS:
                self._refuse(400, f"The request has more than {MAX_HEADER_FIELDS} header fields.")
            elif self._timer is None and not self._answering():
                self._timer = self.loop.call_at(self._idle_since + limits.header_timeout, self._head_late)
        elif self._timer is None and not self.pipeline:
            # A pipelined request's body waits (reading is paused) until the one before
            # it is answered: its deadline starts then (on_response_complete).
            self._timer = self.loop.call_later(self._limits.body_timeout, self._body_late)

    def handle_websocket_upgrade(self) -> None:
        # The connection becomes the WebSocket protocol's (the Live API): this one's timers
        # and body holds end here, and its client's connection count is given back when the
        # socket closes, which only the new protocol sees.
        self._plain_close = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release()
        peer, self._peer = self._peer, None
        turn = cast(TurnTransport, self.transport)
        turn.on_close = None  # a WebSocket closes by its own handshake, never lingering
        _base.handle_websocket_upgrade(self)
        if peer is None:
            return
        protocol = turn.get_protocol()
        limits = self._limits
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            left = limits.connections.get(peer, 1) - 1
            if left > 0:
                limits.connections[peer] = left
            else:
                limits.connections.pop(peer, None)
            lost(exc)

        protocol.connection_lost = connection_lost

    def shutdown(self) -> None:
        self._plain_close = True  # a stopping server waits for its connections: none lingers
        if self._refused:
            self.transport.close()  # a lingering connection has nothing left to finish
        else:
            super().shutdown()

    # --- parser callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._refused:
            return
        _base.on_message_begin(self)
        if self._timer is None and not self._answering():
            # A head that begins on an idle keep-alive connection has its time from now on:
            # how long the connection sat idle is keep_alive_timeout's to bound, not this.
            self._idle_since = self.loop.time()
        self._stage = HEAD

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        limits = self._limits
        if len(self.headers) > MAX_HEADER_FIELDS:
            self._refuse(400, f"The request has more than {MAX_HEADER_FIELDS} header fields.")
            return
        # A head that came in one read passed no check in data_received: measured here when
        # the read could have held a head too large (one addition for every other request).
        if self._head_bytes + self._read_size > limits.max_header_bytes and (
            self._head_size() > limits.max_header_bytes
        ):
            self._refuse(400, f"The request head is larger than {limits.max_header_bytes} bytes.")
            return
        # Under pressure only (a header scan costs every request), a body that says it
        # will not fit is refused before the client sends it.
        if limits.buffered * 2 > limits.max_buffered_bytes:
            declared = self._declared_length()
            if declared > limits.max_buffered_bytes - limits.buffered:
                self._refuse_busy()
                return
        self._stage = BODY
        self._head_bytes = 0
        _base.on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            _base.on_body(self, body)  # dropped by uvicorn: a body its app has already answered
            return
        limits = self._limits
        size = len(body)
        if limits.buffered + size > limits.max_buffered_bytes:
            self._refuse_busy()
            return
        limits.buffered += size
        self._held += size
        _base.on_body(self, body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        _base.on_message_complete(self)
        self._stage = IDLE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def on_response_complete(self) -> None:
        held = self._held
        if held and self.cycle.response_complete:
            # The request is done (no pipelined one has begun since): its body is let go.
            self._held = 0
            self._limits.buffered -= held
        if self._refused:
            self.server_state.total_requests += 1
            return  # lingering: nothing more is read, no pipelined request is started
        _base.on_response_complete(self)
        self._idle_since = self.loop.time()
        stage = self._stage
        if stage == IDLE or self._timer is not None or self.transport.is_closing():
            return
        if stage == HEAD:  # part of the next head came while this request ran
            self._timer = self.loop.call_at(self._idle_since + self._limits.header_timeout, self._head_late)
        elif not self.pipeline:  # a pipelined request has just started, its body not all in
            self._timer = self.loop.call_later(self._limits.body_timeout, self._body_late)

    # --- refusals -------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, f"Malformed HTTP request: {msg}", level=0)  # uvicorn has logged it

    def _head_late(self) -> None:
        self._timer = None
        if self._refused or self.transport.is_closing():
            return
        if self._stage == HEAD:
            self._refuse(408, f"The request head did not arrive within {self._limits.header_timeout:g} s.")
        else:
            self.transport.close()  # nothing came: an idle connection, closed without a word

    def _body_late(self) -> None:
        self._timer = None
        if not self._refused and self._stage == BODY and not self.transport.is_closing():
            self._refuse(408, f"The request body did not arrive within {self._limits.body_timeout:g} s.")

    def _refuse_busy(self) -> None:
        self._refuse(
            503,
            "The gateway holds as many request bodies as it may at once; retry shortly.",
            retry_after=RETRY_AFTER_S,
            level=logging.WARNING,
        )

    def _answering(self) -> bool:
        """Whether an earlier request's answer is still on its way (it must not be cut into)."""
        cycle = self.cycle
        return bool(self.pipeline) or (cycle is not None and not cycle.response_complete)

    def _refuse(
        self,
        status: int,
        message: str,
        retry_after: float | None = None,
        level: int = logging.INFO,
        linger: float = LINGER_S,
    ) -> None:
        """Answer ``status`` in Google's shape when nothing of an answer is on the wire, stop
        the app's request (it sees a disconnect) and close the connection, lingering."""
        self._refused = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release()
        cycle = self.cycle
        if self._stage != BODY or cycle is None:
            answer = not self._answering()  # a head: no app has this request yet
        elif cycle.response_complete:
            answer = False  # the app answered already; the rest of its body is not wanted
        else:
            answer = not cycle.response_started and not self.pipeline
            # The app's receive() now returns http.disconnect and its sends are dropped.
            cast(dict[str, Any], cycle.scope)[SCOPE_TRANSPORT_STATUS] = status
            cycle.disconnected = True
            cycle.waiting_for_100_continue = False
            cycle.message_event.set()
        if level:
            log.log(level, "refused with %d, %s: %s", status, self.client[0] if self.client else "-", message)
        if not answer:
            self.transport.close()
            return
        headers: list[tuple[bytes, bytes]] = []
        details = None
        if retry_after is not None:
            headers.append((b"retry-after", retry_after_header(retry_after).encode()))
            details = [retry_info(retry_after)]
        self.transport.write(self._error_response(status, message, headers, details))
        self._linger(linger)

    def _error_response(
        self,
        status: int,
        message: str,
        headers: Iterable[tuple[bytes, bytes]],
        details: list[dict[str, Any]] | None,
    ) -> bytes:
        body = error_body(status, message, details=details)
        content = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
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
        return b"".join(content)

    def _linger(self, seconds: float = LINGER_S) -> None:
        """Shut our side for writing once the answer is out, then read and drop what the
        client still sends until it closes, or ``seconds`` at most."""
        transport = self.transport
        if transport.is_closing():
            return
        if self._plain_close or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.flow.resume_reading()
        self._timer = self.loop.call_later(seconds, transport.close)

    def _linger_on_close(self) -> bool:
        """Asked by ``TurnTransport.close``: when the app answers (with ``connection: close``)
        while its request is still arriving, linger instead of closing at once."""
        if self._refused or self._plain_close or self._stage == IDLE:
            return False
        self._refused = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._linger()
        return True

    # --- bookkeeping ----------------------------------------------------------------------

    def _release(self) -> None:
        held = self._held
        if held:
            self._held = 0
            self._limits.buffered -= held

    def _declared_length(self) -> int:
        for name, value in self.headers:
            if name == b"content-length":
                return int(value) if value.isdigit() and len(value) < 19 else 0
        return 0

    def _head_size(self) -> int:
        """The head's size, near enough: request line, and each field with its separators."""
        return len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)


class StoppingServer(uvicorn.Server):
    """uvicorn's server, calling ``on_stop`` the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_stop = on_stop

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._on_stop()
        super().handle_exit(sig, frame)
        # A stop signal is how the daemon is meant to stop: once everything admitted has
        # been answered, exit 0 instead of re-raising the signal as uvicorn does (status 143).
        self._captured_signals.clear()


def server_config(
    app: Any, limits: TransportLimits, *, drain_timeout: float, keep_alive_timeout: int, **extra: Any
) -> uvicorn.Config:
    """uvicorn's config for the gateway: uvloop, httptools with this module's protocol."""
    return uvicorn.Config(
        app,
        loop="uvloop",
        # httptools, with Google-shaped refusals and the transport's limits (above)
        http=cast(type[asyncio.Protocol], protocol_factory(limits)),
        # The Live API's WebSocket: the upgrade hands the connection over (above); a message
        # is bounded by ws_max_size, and the session by the Live flow's own limits.
        ws="websockets-sansio",
        ws_max_size=limits.max_ws_message_bytes,
        ws_ping_interval=WS_PING_INTERVAL_S,
        ws_ping_timeout=WS_PING_INTERVAL_S,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # X-Forwarded-For is believed only from trusted proxies (callers)
        timeout_graceful_shutdown=math.ceil(drain_timeout),
        # uvicorn's 5 s default is below every proxy's idle timeout: the proxy would reuse
        # connections the daemon is closing (a 502 for its caller).
        timeout_keep_alive=keep_alive_timeout,
        **extra,
    )


def run_workers(config: uvicorn.Config, sock: socket.socket) -> None:
    """uvicorn's supervisor of ``config.workers`` processes sharing ``sock``."""
    Multiprocess(config, sockets=[sock]).run()
