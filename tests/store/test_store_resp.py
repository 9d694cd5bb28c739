"""The pipelined connection of knowctl.net.resp against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import exceptions as rexc

from knowctl.net.resp import Multiplexer, address_for
from knowctl.store import StoreUnavailable, keys, open_store
from knowctl.store.breaker import BreakerStore
from knowctl.store.redis.store import RedisStore
from tests.support.net import LOOPBACK, free_port
from tests.support.redis_server import RedisServer, redis_server, server_binary
from tests.support.tls import self_signed

pytestmark = pytest.mark.anyio

SLOW_SCRIPT = """
local t = redis.call('TIME')
repeat
  local n = redis.call('TIME')
until (n[1] - t[1]) * 1000000 + (n[2] - t[2]) >= tonumber(ARGV[1])
return 'slept'
"""


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of this test's own, to stop and restart."""
    with redis_server() as server:
        yield server


def mux_for(url: str, timeout: float = 1.0) -> Multiplexer:
    address = address_for(url)
    assert address is not None
    return Multiplexer(address, timeout=timeout)


def test_address_for_reads_the_url_and_refuses_what_it_does_not_implement() -> None:
    plain = address_for("redis://user:p%40ss@db.example:6380/3")
    assert plain is not None
    assert (plain.host, plain.port, plain.db, plain.username, plain.password) == (
        "db.example",
        6380,
        3,
        "user",
        "p@ss",
    )
    assert plain.tls is None
    assert "p@ss" not in repr(plain)
    tls = address_for("rediss://db.example?ssl_cert_reqs=none")
    assert tls is not None and tls.tls is not None and tls.tls.check_hostname is False
    assert address_for("redis://db.example?socket_keepalive=true") is None  # left to redis-py


async def test_concurrent_calls_each_get_their_own_reply(redis_url: str) -> None:
    mux = mux_for(redis_url)
    try:
        names = [f"resp:{os.getpid()}:{i}" for i in range(500)]
        await asyncio.gather(*(mux.execute("SET", n, f"value-{i}") for i, n in enumerate(names)))
        got = await asyncio.gather(*(mux.execute("GET", n) for n in names))
        assert got == [f"value-{i}".encode() for i in range(len(names))]
        await mux.execute("DEL", *names)
    finally:
        await mux.close()


async def test_error_reply_raises_and_the_connection_stays_usable(redis_url: str) -> None:
    mux = mux_for(redis_url)
    try:
        with pytest.raises(rexc.ResponseError, match="unknown command"):
            await mux.execute("NO-SUCH-COMMAND")
        assert await mux.execute("PING") == b"PONG"
    finally:
        await mux.close()


async def test_evalsha_loads_an_unknown_script(redis_url: str) -> None:
    mux = mux_for(redis_url)
    text = f"return 'loaded {os.getpid()} ' .. ARGV[1]"
    sha = hashlib.sha1(text.encode()).hexdigest()
    try:
        await mux.execute("SCRIPT", "FLUSH")
        assert await mux.evalsha(sha, text, [], ["once"]) == f"loaded {os.getpid()} once".encode()
        assert await mux.evalsha(sha, text, [], ["twice"]) == f"loaded {os.getpid()} twice".encode()
    finally:
        await mux.close()


async def test_a_cancelled_call_drops_its_reply_in_turn(redis_url: str) -> None:
    mux = mux_for(redis_url)
    name = f"resp:cancel:{os.getpid()}"
    try:
        await mux.execute("SET", name, "after")
        slow = asyncio.ensure_future(mux.execute("EVAL", SLOW_SCRIPT, 0, 150_000))
        await asyncio.sleep(0.02)
        slow.cancel()
        # Sent after the slow script: its reply must be this GET's, not the script's.
        assert await mux.execute("GET", name) == b"after"
        with pytest.raises(asyncio.CancelledError):
            await slow
    finally:
        await mux.close()


async def test_a_silent_server_fails_calls_in_time_and_the_next_call_reconnects(
    own_server: RedisServer,
) -> None:
    mux = mux_for(own_server.url, timeout=0.1)
    assert own_server.proc is not None
    try:
        assert await mux.execute("PING") == b"PONG"
        os.kill(own_server.proc.pid, signal.SIGSTOP)
        stalled = mux._conn
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(mux.execute("PING") for _ in range(20)), return_exceptions=True)
            waited = time.monotonic() - started
            await asyncio.sleep(0.6)  # silent past max(0.5 s, 4 x timeout): the path is gone
        finally:
            os.kill(own_server.proc.pid, signal.SIGCONT)
        assert all(isinstance(r, rexc.TimeoutError | rexc.ConnectionError) for r in results), results
        assert waited < 0.5
        assert stalled is not None and stalled.lost
        assert await mux.execute("PING") == b"PONG"  # a new connection, not the stalled one
        assert mux._conn is not stalled
    finally:
        await mux.close()


async def test_one_late_reply_is_not_an_outage(redis_url: str) -> None:
    """A reply later than the timeout fails its own call only: the connection and the
    calls behind it go on (dropping it would fail every caller for one slow reply)."""
    mux = mux_for(redis_url, timeout=0.05)
    name = f"resp:late:{os.getpid()}"
    try:
        await mux.execute("SET", name, "still here")
        connection = mux._conn
        slow = asyncio.ensure_future(mux.execute("EVAL", SLOW_SCRIPT, 0, 120_000))
        await asyncio.sleep(0.01)
        behind = asyncio.ensure_future(mux.execute("GET", name))
        with pytest.raises(rexc.TimeoutError):
            await slow
        await asyncio.sleep(0.2)  # the script has finished; its late reply was dropped in turn
        assert connection is not None and not connection.lost and mux._conn is connection
        assert await mux.execute("GET", name) == b"still here"
        with contextlib.suppress(rexc.TimeoutError):
            assert await behind == b"still here"
        await mux.execute("DEL", name)
    finally:
        await mux.close()


async def test_a_restarted_server_is_reached_again(own_server: RedisServer) -> None:
    mux = mux_for(own_server.url, timeout=0.5)
    try:
        await mux.execute("SET", "k", "v")
        own_server.stop()
        with pytest.raises(rexc.ConnectionError):
            await mux.execute("GET", "k")
        own_server.start()
        assert await mux.execute("GET", "k") is None  # restarted empty
    finally:
        await mux.close()


async def test_wrong_password_is_a_clear_error(own_server: RedisServer) -> None:
    url = own_server.url.replace("redis://", "redis://:wrong@")
    mux = mux_for(url)
    try:
        with pytest.raises(rexc.AuthenticationError) as refused:
            await mux.execute("PING")
        assert "wrong" not in str(refused.value)
    finally:
        await mux.close()


async def test_store_on_a_single_server_uses_the_multiplexer_and_maps_outages(
    own_server: RedisServer,
) -> None:
    store = open_store(own_server.url, timeout=0.2)
    name = keys.cache_entry("resp-test")
    assert isinstance(store, BreakerStore) and isinstance(store.inner, RedisStore)
    assert store.inner._mux is not None  # single commands take the pipelined connection
    try:
        await store.set(name, b"v", 10)
        assert await store.get(name) == b"v"
        own_server.stop()
        with pytest.raises(StoreUnavailable):
            await store.get(name)
    finally:
        await store.close()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """redis-server speaking only TLS, with a self-signed certificate for 127.0.0.1."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [server_binary(), "--port", "0", "--tls-port", str(port), "--bind", LOOPBACK,
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
                break
            time.sleep(0.05)
        yield port, cert
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_tls_server_through_the_multiplexer(tls_server: tuple[int, Path]) -> None:
    port, cert = tls_server
    trusted = mux_for(f"rediss://{LOOPBACK}:{port}/0?ssl_ca_certs={cert}")
    untrusted = mux_for(f"rediss://{LOOPBACK}:{port}/0")  # the system's CAs: not ours
    try:
        assert await trusted.execute("SET", "tls-key", "over tls") == b"OK"
        assert await trusted.execute("GET", "tls-key") == b"over tls"
        with pytest.raises(rexc.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusted.execute("PING")
    finally:
        await trusted.close()
        await untrusted.close()
