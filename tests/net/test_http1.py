"""knowctl.net.http1 against a real HTTP server on loopback whose behaviour each path picks:
keep-alive, chunked streams, bodies delimited by the connection's end, stalls, abrupt ends."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from knowctl.net import http1
from tests.support.net import LOOPBACK, free_port
from tests.support.tinyproxy import tinyproxy
from tests.support.tls import self_signed

pytestmark = pytest.mark.anyio


@dataclass
class Server:
    port: int
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[bytes] = field(default_factory=list)

    @property
    def origin(self) -> http1.Origin:
        return http1.Origin("http", LOOPBACK, self.port)


async def _serve(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    server.connections += 1
    server.open_now += 1
    server.most_open = max(server.most_open, server.open_now)
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            length = next(
                (int(li.split(":")[1]) for li in lines if li.lower().startswith("content-length:")), 0
            )
            body = await reader.readexactly(length) if length else b""
            server.requests.append(head + body)
            if path == "/ok":
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
                )
            elif path == "/echo":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            elif path == "/slow":
                await asyncio.sleep(0.2)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
            elif path == "/stream":
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                for piece in (b"one", b"two", b"three"):
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                    await asyncio.sleep(0.1)
                writer.write(b"0\r\n\r\n")
            elif path == "/until-close":
                writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
                await writer.drain()
                writer.close()
                return
            elif path == "/close":
                writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
                writer.close()
                return
            elif path == "/cut":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
                await writer.drain()
                writer.close()
                return
            elif path == "/then-drop":  # keep-alive claimed, then dropped as an idle timeout would
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.close()
                return
            elif path == "/garbage":
                writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            elif path == "/hang":
                await asyncio.sleep(30)
            await writer.drain()
    finally:
        server.open_now -= 1
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server(port=0)
    listener = await asyncio.start_server(lambda r, w: _serve(state, r, w), LOOPBACK, 0)
    state.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield state


@contextlib.asynccontextmanager
async def pool(**overrides: float) -> AsyncIterator[http1.Pool]:
    """A pool with short timeouts, closed after the block."""
    values = {"max_connections": 8, "connect_timeout": 1.0, "timeout": 2.0, **overrides}
    p = http1.Pool(
        max_connections=int(values["max_connections"]),
        connect_timeout=values["connect_timeout"],
        timeout=values["timeout"],
    )
    try:
        yield p
    finally:
        await p.close()


async def call(p: http1.Pool, server: Server, path: str, body: bytes = b"") -> tuple[int, bytes]:
    async with p.request("POST", server.origin, path, {"content-type": "application/json"}, body) as r:
        return r.status, await r.read()


async def test_sequential_calls_share_one_kept_alive_connection(server: Server) -> None:
    async with pool() as p:
        for i in range(5):
            assert await call(p, server, "/echo", b"call %d" % i) == (200, b"call %d" % i)
        assert server.connections == 1
        first = server.requests[0]
        assert (
            first.startswith(b"POST /echo HTTP/1.1\r\n")
            and f"host: {LOOPBACK}:{server.port}".encode() in first
        )
        assert b"content-length: 6\r\n" in first


async def test_chunked_answer_arrives_piece_by_piece(server: Server) -> None:
    async with pool() as p:
        arrivals: list[tuple[float, bytes]] = []
        started = time.monotonic()
        async with p.request("POST", server.origin, "/stream", {}, b"") as response:
            assert response.status == 200 and response.header(b"transfer-encoding") == b"chunked"
            async for piece in response.chunks():
                arrivals.append((time.monotonic() - started, piece))
        assert b"".join(piece for _, piece in arrivals) == b"onetwothree"
        assert arrivals[0][0] < 0.09  # the first piece before the second was even sent
        assert await call(p, server, "/ok") == (200, b"{}")
        assert server.connections == 1  # a finished chunked answer leaves the connection reusable


async def test_body_until_close_and_connection_close_are_read_whole_and_not_reused(server: Server) -> None:
    async with pool() as p:
        assert await call(p, server, "/until-close") == (200, b"all of it")
        assert await call(p, server, "/close") == (200, b"ok")
        assert await call(p, server, "/ok") == (200, b"{}")
        assert server.connections == 3


async def test_the_pool_never_opens_more_than_its_cap(server: Server) -> None:
    async with pool(max_connections=2) as p:
        results = await asyncio.gather(*(call(p, server, "/slow") for _ in range(6)))
        assert results == [(200, b"slow")] * 6
        assert server.most_open == 2 and server.connections == 2


async def test_failures_are_typed(server: Server) -> None:
    async with pool(timeout=0.5) as p:
        started = time.monotonic()
        with pytest.raises(http1.Timeout):
            await call(p, server, "/hang")
        assert time.monotonic() - started < 1.5
        with pytest.raises(http1.Broken, match=r"mid-answer|broke"):
            await call(p, server, "/cut")
        with pytest.raises(http1.Broken, match="not valid HTTP"):
            await call(p, server, "/garbage")
        with pytest.raises(http1.ConnectFailed):
            await call(p, Server(port=free_port()), "/ok")
        with pytest.raises(http1.Broken, match="malformed header"):
            p.request("POST", server.origin, "/ok", {"x-evil": "a\r\nhost: elsewhere"}, b"")
        with pytest.raises(http1.Broken, match="malformed request target"):
            p.request("POST", server.origin, "/ok HTTP/1.1\r\nx: y", {}, b"")
        assert await call(p, server, "/ok") == (200, b"{}")  # the pool still works


async def test_a_connection_the_server_dropped_while_idle_is_not_reused(server: Server) -> None:
    async with pool() as p:
        assert await call(p, server, "/then-drop") == (200, b"ok")
        await asyncio.sleep(0.3)  # the server has closed the idle connection meanwhile
        assert await call(p, server, "/ok") == (200, b"{}")
        assert server.connections == 2


def test_origin_parsing() -> None:
    assert http1.Origin.parse("https://example.com/base/path") == http1.Origin("https", "example.com", 443)
    assert http1.Origin.parse("http://127.0.0.1:8090").host_header == "127.0.0.1:8090"
    assert http1.Origin.parse("https://example.com").host_header == "example.com"
    with pytest.raises(ValueError):
        http1.Origin.parse("ftp://example.com")


async def test_https_checks_the_certificate_and_the_host(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    state = Server(port=0)
    listener = await asyncio.start_server(lambda r, w: _serve(state, r, w), LOOPBACK, 0, ssl=served)
    state.port = listener.sockets[0].getsockname()[1]
    origin = http1.Origin("https", LOOPBACK, state.port)
    trusting = http1.Pool(
        max_connections=2, connect_timeout=2, timeout=2, tls=ssl.create_default_context(cafile=str(cert))
    )
    default = http1.Pool(max_connections=2, connect_timeout=2, timeout=2)  # the system's CAs
    async with listener:
        try:
            for _ in range(2):
                async with trusting.request("POST", origin, "/echo", {}, b"secret") as response:
                    assert (response.status, await response.read()) == (200, b"secret")
            assert state.connections == 1  # kept alive over TLS too
            with pytest.raises(http1.ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
                async with default.request("POST", origin, "/ok", {}, b""):
                    pass
        finally:
            await trusting.close()
            await default.close()


async def test_http_goes_through_a_proxy_in_absolute_form(server: Server, tmp_path: Path) -> None:
    with tinyproxy(tmp_path) as proxy:
        through = server.origin.via(http1.Origin.parse(proxy.url))
        async with pool() as p:
            for _ in range(2):
                async with p.request("POST", through, "/echo", {"x-a": "1"}, b"via") as response:
                    assert (response.status, await response.read()) == (200, b"via")
        assert proxy.seen(f"POST http://{LOOPBACK}:{server.port}/echo") == 2
        assert all(b"\r\nvia: " in r.lower() for r in server.requests)  # the proxy's mark


async def test_https_goes_through_a_connect_tunnel_with_tls_checked_as_ever(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    state = Server(port=0)
    listener = await asyncio.start_server(lambda r, w: _serve(state, r, w), LOOPBACK, 0, ssl=served)
    state.port = listener.sockets[0].getsockname()[1]
    trusting = http1.Pool(
        max_connections=2, connect_timeout=2, timeout=2, tls=ssl.create_default_context(cafile=str(cert))
    )
    default = http1.Pool(max_connections=2, connect_timeout=2, timeout=2)  # the system's CAs
    with tinyproxy(tmp_path) as proxy:
        origin = http1.Origin("https", LOOPBACK, state.port).via(http1.Origin.parse(proxy.url))
        async with listener:
            try:
                for _ in range(2):
                    async with trusting.request("POST", origin, "/echo", {}, b"tunnelled") as response:
                        assert (response.status, await response.read()) == (200, b"tunnelled")
                assert state.connections == 1  # one tunnel, kept alive
                assert proxy.seen(f"CONNECT {LOOPBACK}:{state.port}") == 1
                with pytest.raises(http1.ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
                    async with default.request("POST", origin, "/ok", {}, b""):
                        pass
            finally:
                await trusting.close()
                await default.close()


async def test_an_unreachable_proxy_is_a_connect_failure_naming_it(server: Server) -> None:
    dead = http1.Origin("http", LOOPBACK, free_port())
    async with pool() as p:
        for origin in (server.origin.via(dead), http1.Origin("https", LOOPBACK, server.port).via(dead)):
            with pytest.raises(http1.ConnectFailed, match="through the proxy"):
                async with p.request("POST", origin, "/ok", {}, b""):
                    pass
