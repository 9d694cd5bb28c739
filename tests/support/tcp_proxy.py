"""A loopback TCP proxy that records when bytes cross it, in each direction, per connection.

Put between the gateway and Redis, it shows how many round trips a request made: a client
write that follows a reply on the same connection starts a new round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.support.net import LOOPBACK


@dataclass(frozen=True)
class Crossing:
    at: float  # time.monotonic()
    connection: int
    to_server: bool
    data: bytes


@dataclass
class Proxy:
    url: str = ""
    crossings: list[Crossing] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def round_trips(self, start: float, end: float, *, skip_if_sent: bytes = b"SUBSCRIBE") -> int:
        """Round trips begun in [start, end], summed over the connections that never sent
        ``skip_if_sent`` (pub/sub connections receive messages at any time)."""
        with self.lock:
            crossings = list(self.crossings)
        skipped = {c.connection for c in crossings if c.to_server and skip_if_sent in c.data}
        trips = 0
        replied: dict[int, bool] = {}
        for c in crossings:
            if c.connection in skipped:
                continue
            if not c.to_server:
                replied[c.connection] = True
                continue
            fresh = replied.get(c.connection, True)  # a first write, or one after a reply
            replied[c.connection] = False
            if fresh and start <= c.at <= end:
                trips += 1
        return trips


@contextlib.contextmanager
def tcp_proxy(target_host: str, target_port: int) -> Iterator[Proxy]:
    proxy = Proxy()
    ids = itertools.count()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int, up: bool) -> None:
        try:
            while data := await reader.read(65536):
                with proxy.lock:
                    proxy.crossings.append(Crossing(time.monotonic(), conn, up, data))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        conn = next(ids)
        try:
            server_r, server_w = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pump(client_r, server_w, conn, True), pump(server_r, client_w, conn, False))

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        server = await asyncio.start_server(handle, LOOPBACK, 0)
        proxy.url = f"redis://{LOOPBACK}:{server.sockets[0].getsockname()[1]}/0"
        started.set()
        async with server:
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield proxy
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
