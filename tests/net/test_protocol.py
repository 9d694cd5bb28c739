"""TurnTransport: what one loop turn writes leaves in one write, over a real socket pair."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvloop

from knowctl.daemon.config import transport_limits
from knowctl.net.uvicorn_glue import JOIN_LIMIT, TurnTransport
from knowctl.settings import Settings


class CountingTransport:
    """The real transport, counting the writes it is given."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.real = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def connected() -> tuple[TurnTransport, CountingTransport, socket.socket]:
    ours, peer = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    counting = CountingTransport(transport)  # type: ignore[arg-type]
    return TurnTransport(counting, loop), counting, peer  # type: ignore[arg-type]


def read_all(peer: socket.socket, size: int) -> bytes:
    peer.settimeout(5)
    data = b""
    while len(data) < size:
        chunk = peer.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def run(coro: Any) -> Any:
    return uvloop.run(coro)


def test_writes_of_one_turn_leave_in_one_write() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], bytes]:
        held, counting, peer = await connected()
        held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        held.write(b"{}")
        during_turn = list(counting.writes)  # nothing leaves before the turn ends
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        data = read_all(peer, 40)
        held.close()
        peer.close()
        return during_turn, counting.writes, data

    during_turn, writes, data = run(scenario())
    assert during_turn == []
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert data == writes[0]


def test_writes_of_different_turns_leave_separately_and_in_order() -> None:
    async def scenario() -> tuple[list[bytes], bytes]:
        held, counting, peer = await connected()
        held.write(b"head;")
        await asyncio.sleep(0.01)
        held.write(b"first event;")
        held.write(b"second event")
        await asyncio.sleep(0.01)
        data = read_all(peer, 29)
        held.close()
        peer.close()
        return counting.writes, data

    writes, data = run(scenario())
    assert writes == [b"head;", b"first event;second event"]
    assert data == b"head;first event;second event"


def test_close_sends_what_is_held_first() -> None:
    async def scenario() -> bytes:
        held, _, peer = await connected()
        held.write(b"last words")
        held.close()  # in the same turn: the held bytes must not be lost
        await asyncio.sleep(0.01)
        data = read_all(peer, 64)  # reads to EOF
        peer.close()
        return data

    assert run(scenario()) == b"last words"


def test_large_writes_are_passed_on_without_joining() -> None:
    big = b"x" * (JOIN_LIMIT + 1)

    async def scenario() -> tuple[list[int], int]:
        held, counting, peer = await connected()
        held.write(b"head")
        held.write(big)
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, read_all, peer, len(big) + 4)
        held.close()
        peer.close()
        return [len(w) for w in counting.writes], len(data)

    sizes, received = run(scenario())
    assert sizes == [4, len(big)]
    assert received == len(big) + 4


def test_abort_drops_what_is_held() -> None:
    async def scenario() -> tuple[list[bytes], bytes]:
        held, counting, peer = await connected()
        held.write(b"never sent")
        held.abort()
        await asyncio.sleep(0.01)
        peer.settimeout(5)
        data = peer.recv(64)  # EOF or a reset, never the held bytes
        peer.close()
        return counting.writes, data

    writes, data = run(scenario())
    assert writes == [] and data == b""


def test_the_gateways_protocol_sends_head_and_body_in_one_write() -> None:
    """uvicorn writes a response's head and body separately; through GatewayHttpProtocol
    they reach the socket as one write."""
    import uvicorn
    from uvicorn.server import ServerState

    from knowctl.net.uvicorn_glue import GatewayHttpProtocol

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    async def scenario() -> tuple[list[bytes], bytes]:
        config = uvicorn.Config(app, http=GatewayHttpProtocol, lifespan="off", log_config=None)
        config.load()
        loop = asyncio.get_running_loop()
        protocol = GatewayHttpProtocol(
            config=config,
            server_state=ServerState(),
            app_state={},
            _loop=loop,
            limits=transport_limits(Settings()),
        )
        ours, peer = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, ours)
        counting = CountingTransport(transport)  # type: ignore[arg-type]
        protocol.connection_made(counting)  # type: ignore[arg-type]
        protocol.data_received(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        data = await loop.run_in_executor(None, read_all, peer, 1)
        await asyncio.sleep(0.01)
        transport.close()
        peer.close()
        return counting.writes, data

    writes, first = run(scenario())
    assert len(writes) == 1, writes
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n{}")
    assert first == b"H"
