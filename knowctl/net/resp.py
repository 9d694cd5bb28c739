"""One pipelined connection to one Redis server, shared by every caller in the daemon.

Why not redis-py's pool for these calls: the pool checks a connection out for each command
and back in after its reply, behind two timeout layers and a retry wrapper. With 32 calls
in flight that costs several times the CPU per command of this connection, more than
everything else a cache hit does (figures: docs/architecture.md, "Measured choices").
Redis answers a connection's commands in the order they came, so one connection
can carry every caller's commands at once: a call writes its command and waits for the
reply in its place in a FIFO. Commands written in the same turn of the event loop share one
round trip (automatic pipelining).

Only for commands that answer at once and leave no state on the connection (no SUBSCRIBE,
MULTI, blocking pops): those stay on redis-py (pub/sub, pipelines, SCAN).

Failure rules, all in :meth:`Multiplexer.execute`:

- every call is bounded by ``timeout``; a reply that comes later is read and dropped in its
  turn, so the FIFO stays aligned. Before a call is failed the socket gets one more turn of
  the event loop: uvloop runs due timers before it polls the sockets, so on a busy loop a
  reply already waiting in the socket would otherwise count as late;
- one late reply is not an outage: only when nothing at all has arrived for ``silence``
  (max(0.5 s, 4 x timeout), the breaker's rule) since a timed-out call was written is the
  server or the path taken as gone: the connection is dropped, every pending call fails at
  once, and the next call connects again;
- a lost connection fails every pending call with ConnectionError at once.

Errors are redis-py's exception classes, so the store maps them in one place.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis import exceptions as rexc
from redis.asyncio.connection import SSLConnection, parse_url

Arg = bytes | str | int | float


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None

    def __repr__(self) -> str:  # never shows the password
        return f"Address({self.host}:{self.port}/{self.db}, tls={self.tls is not None})"


def _pack(args: tuple[Arg, ...]) -> bytes:
    # hiredis's stub types the argument as a 1-tuple; it takes any number of arguments.
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed


_TLS_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def address_for(url: str) -> Address | None:
    """Where a ``redis://`` or ``rediss://`` URL points, or None when it sets connection
    options this module does not implement (the store then keeps redis-py's pool for all)."""
    opts: dict[str, Any] = dict(parse_url(url))
    tls: ssl.SSLContext | None = None
    if opts.pop("connection_class", None) is SSLConnection:
        tls = ssl.create_default_context(cafile=opts.pop("ssl_ca_certs", None))
        verify = _TLS_VERIFY.get(str(opts.pop("ssl_cert_reqs", "required")).lower())
        if verify is None:
            return None
        if verify is not ssl.CERT_REQUIRED:
            tls.check_hostname = False
        tls.verify_mode = verify
    address = Address(
        host=opts.pop("host", "localhost"),
        port=int(opts.pop("port", 6379)),
        db=int(opts.pop("db", 0)),
        username=opts.pop("username", None),
        password=opts.pop("password", None),
        tls=tls,
    )
    return None if opts else address


class _Connection(asyncio.Protocol):
    """The socket, the reply parser (hiredis, in C) and the FIFO of calls awaiting replies."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = hiredis.Reader()
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.last_read = 0.0  # loop time of the last bytes received
        self._outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue a command; the commands of one turn of the event loop leave in one write
        (one system call for all of them, where a write each cost 5-10 µs)."""
        future = self._loop.create_future()
        if self.lost:  # lost while the caller waited for it to be opened: fail now, not at the timeout
            future.set_exception(rexc.ConnectionError("connection to Redis lost"))
            return future
        self.pending.append(future)
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(packed)
        return future

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self.transport is not None and not self.lost:
            self.transport.write(b"".join(outgoing))

    def data_received(self, data: bytes) -> None:
        self.last_read = self._loop.time()
        self._reader.feed(data)
        pending = self.pending
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(rexc.ConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:  # no complete reply yet
                return
            if not pending:
                self.abort(rexc.ConnectionError("Redis sent a reply nobody asked for"))
                return
            future = pending.popleft()
            if not future.done():  # a call that timed out or was cancelled drops its reply
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_pending(rexc.ConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def abort(self, error: Exception) -> None:
        self._fail_pending(error)
        if self.transport is not None:
            self.transport.abort()

    def _fail_pending(self, error: Exception) -> None:
        self.lost = True
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)


# Silence that drops the connection: the circuit breaker's rule (knowctl/store/breaker.py).
SILENCE_MIN_S = 0.5
# The extra wait before a call times out, in which the event loop polls the sockets once.
_LAST_TURN_S = 0.001


class Multiplexer:
    def __init__(self, address: Address, *, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._address = address
        self._timeout = timeout
        self._silence = max(SILENCE_MIN_S, 4 * timeout)
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closed = False

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply; raises rexc.ResponseError for an error
        reply, rexc.TimeoutError after ``timeout`` and rexc.ConnectionError."""
        conn = self._conn
        if conn is None or conn.lost:
            conn = await self._connection()
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        future = conn.send(_pack(args))
        timer = loop.call_later(self._timeout, self._expire, conn, future, sent_at)
        try:
            reply = await future
        finally:
            timer.cancel()
        if isinstance(reply, hiredis.ReplyError):
            raise rexc.ResponseError(str(reply))
        return reply

    async def evalsha(self, sha: str, text: str, keys: list[str], args: list[Arg]) -> Any:
        """EVALSHA, loading the script first when the server does not know it (first use,
        restart, SCRIPT FLUSH)."""
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except rexc.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.execute("SCRIPT", "LOAD", text)
        return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    def _expire(self, conn: _Connection, future: asyncio.Future[Any], sent_at: float) -> None:
        if not future.done():  # a reply may be waiting unread: let the loop poll once first
            asyncio.get_running_loop().call_later(_LAST_TURN_S, self._fail, conn, future, sent_at)

    def _fail(self, conn: _Connection, future: asyncio.Future[Any], sent_at: float) -> None:
        if future.done():
            return
        future.set_exception(rexc.TimeoutError(f"no reply from Redis within {self._timeout:g}s"))
        if conn.last_read < sent_at and not conn.lost:
            loop = asyncio.get_running_loop()
            loop.call_at(sent_at + self._silence, self._drop_if_silent, conn, sent_at)

    def _drop_if_silent(self, conn: _Connection, sent_at: float) -> None:
        if conn.last_read < sent_at and not conn.lost:
            # Nothing at all since this command left: the server or the path is gone, not slow.
            conn.abort(rexc.ConnectionError(f"Redis silent for {self._silence:g}s: connection dropped"))

    async def _connection(self) -> _Connection:
        if self._closed:
            raise rexc.ConnectionError("the store is closed")
        # One attempt at a time: every caller that finds no connection waits for the same one.
        task = self._connecting
        if task is None:
            task = asyncio.get_running_loop().create_task(self._connect())
            self._connecting = task
            task.add_done_callback(self._connected)
        return await asyncio.shield(task)

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._conn = task.result()

    async def _connect(self) -> _Connection:
        a = self._address
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                _, conn = await loop.create_connection(lambda: _Connection(loop), a.host, a.port, ssl=a.tls)
                try:
                    await self._handshake(conn)
                except BaseException:
                    conn.abort(rexc.ConnectionError("Redis handshake failed"))
                    raise
        except TimeoutError as exc:
            raise rexc.TimeoutError(f"connecting to Redis took over {self._timeout:g}s") from exc
        except OSError as exc:
            raise rexc.ConnectionError(f"cannot connect to Redis at {a.host}:{a.port}: {exc}") from exc
        return conn

    async def _handshake(self, conn: _Connection) -> None:
        """AUTH and SELECT, pipelined (the caller of _connect bounds the wait)."""
        a = self._address
        commands: list[tuple[Arg, ...]] = []
        if a.password is not None:
            commands.append(("AUTH", a.username, a.password) if a.username else ("AUTH", a.password))
        if a.db:
            commands.append(("SELECT", a.db))
        futures = [conn.send(_pack(c)) for c in commands]
        for command, future in zip(commands, futures, strict=True):
            reply = await future
            if isinstance(reply, hiredis.ReplyError):  # never echo the command: it holds the password
                error = rexc.AuthenticationError if command[0] == "AUTH" else rexc.ResponseError
                raise error(f"Redis refused {command[0]!s}: {reply}")

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.abort(rexc.ConnectionError("the store is closed"))
