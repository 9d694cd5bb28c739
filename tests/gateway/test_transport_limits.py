"""The HTTP transport's bounds, over real sockets to a real gateway process: request bodies
held by the process in total, head and body timeouts, the head's size, and connections per
client address. Each refusal is an answer in Google's error shape that reaches the client
(the connection closes lingering, so a client still sending reads it instead of a reset).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.fixtures import Gateway, Simulator, start_gateway
from tests.support.net import LOOPBACK

MIB = 1024 * 1024
GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after this answer

    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = orjson.loads(self.body)["error"]
        return error


def port_of(gateway: Gateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def read_answer(sock: socket.socket) -> Answer:
    """One HTTP answer from ``sock`` (Content-Length framed), then whether the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside an answer")
        rest += chunk
    closed = False
    if headers.get("connection") == "close":
        sock.settimeout(2 * 5.0 + 1)  # at most the server's lingering time, and some
        closed = sock.recv(1) == b""
    return Answer(int(lines[0].split()[1]), headers, rest[:length], closed)


def payload(size: int, tag: str) -> bytes:
    """A valid generateContent body of about ``size`` bytes (distinct per tag: no coalescing)."""
    text = tag + " " + "y" * max(0, size - 48 - len(tag))
    return orjson.dumps({"contents": [{"parts": [{"text": text}]}]})


def post_head(length: int | None, path: str = GENERATE) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode()


def post(port: int, body: bytes, *, chunked: bool = False, piece: int = 64 * 1024) -> Answer:
    """POST ``body`` over a new connection, all of it, then read the answer."""
    with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
        sock.sendall(post_head(None if chunked else len(body)))
        for start in range(0, len(body), piece):
            chunk = body[start : start + piece]
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        return read_answer(sock)


class RssSampler:
    """The peak RSS of a process, sampled every few milliseconds while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.005)

    @contextlib.contextmanager
    def running(self) -> Iterator[RssSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss(self.pid))


# --- the bodies held in total --------------------------------------------------------------

BUDGET = 16 * MIB
FLOOD = 30
FLOOD_BODY = 4 * MIB


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_flood_of_large_bodies_is_held_to_the_bound(
    tmp_path: Path, simulator: Simulator, chunked: bool
) -> None:
    """30 connections each sending a 4 MiB body (120 MiB) to a process that may hold 16 MiB:
    each is answered (200 or 503), the RSS stays within the bound, and the bytes are given
    back: a body of nearly the whole bound passes afterwards."""
    handle, process = start_gateway(
        tmp_path,
        "--upstream",
        simulator.url,
        env={
            "KNOWCTL_AUTH_MODE": "anonymous",  # no credentials asked: every body is read
            "KNOWCTL_USER_LIMITS": "none",
            "KNOWCTL_MAX_BODY_BYTES": str(BUDGET),
            "KNOWCTL_MAX_BUFFERED_BYTES": str(BUDGET),
            "KNOWCTL_CACHE_ENABLED": "false",
        },
    )
    with process as proc:
        port = port_of(handle)
        # Warm up (allocator arenas, code paths, the upstream pool) before the baseline.
        for i in range(3):
            assert post(port, payload(FLOOD_BODY, f"warm {i}")).status == 200
        before = rss(proc.pid)
        answers: list[Answer | BaseException] = []

        def flood_client(i: int) -> None:
            try:
                answers.append(post(port, payload(FLOOD_BODY, f"flood {i}"), chunked=chunked))
            except OSError as exc:
                answers.append(exc)

        threads = [threading.Thread(target=flood_client, args=(i,)) for i in range(FLOOD)]
        with RssSampler(proc.pid).running() as sampler:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        grown = sampler.peak - before
        failures = [a for a in answers if not isinstance(a, Answer)]
        assert not failures, f"{len(failures)} clients got no answer: {failures[:3]}"
        statuses = sorted(a.status for a in answers if isinstance(a, Answer))
        # At most BUDGET of bodies is held; each held body is also parsed and serialized for
        # the upstream (two more copies), one body at a time has transient copies (joined
        # from its chunks, its cache key), and the allocator keeps some slack: 4 x BUDGET
        # and 16 MiB (measured: 58-61 MiB). Without the bound the same flood holds all
        # 120 MiB of bodies at once, and the RSS grows by about 265 MiB.
        assert grown < 4 * BUDGET + 16 * MIB, f"RSS grew {grown / MIB:.1f} MiB ({statuses.count(200)} held)"
        assert len(statuses) == FLOOD and set(statuses) <= {200, 503}, statuses
        assert 503 in statuses, statuses
        for refused in (a for a in answers if isinstance(a, Answer) and a.status == 503):
            assert refused.error()["status"] == "UNAVAILABLE"
            assert refused.headers["retry-after"] == "1" and refused.closed
        # Every byte was given back: a body of nearly the whole bound fits again.
        assert post(port, payload(BUDGET - 64 * 1024, "after")).status == 200
        ok = httpx.post(handle.url + GENERATE, json={"contents": [{"parts": [{"text": "hi"}]}]})
        assert ok.status_code == 200, ok.text


def test_a_body_that_says_it_will_not_fit_is_refused_before_it_is_sent(
    tmp_path: Path, simulator: Simulator
) -> None:
    """With the bound mostly taken, a head declaring a body larger than what is left is
    answered 503 at once: the client need not send it."""
    handle, process = start_gateway(
        tmp_path,
        "--upstream",
        simulator.url,
        env={
            "KNOWCTL_AUTH_MODE": "anonymous",
            "KNOWCTL_USER_LIMITS": "none",
            "KNOWCTL_MAX_BODY_BYTES": str(4 * MIB),
            "KNOWCTL_MAX_BUFFERED_BYTES": str(4 * MIB),
        },
    )
    with process, contextlib.ExitStack() as stack:
        port = port_of(handle)
        # Hold 3 MiB: a request whose body stops one byte short of its Content-Length.
        holder = stack.enter_context(socket.create_connection((LOOPBACK, port), timeout=10))
        held = payload(3 * MIB, "held")
        holder.sendall(post_head(len(held)) + held[:-1])
        time.sleep(1.0)  # the gateway has read it
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
            sock.sendall(post_head(2 * MIB))  # the head only
            answer = read_answer(sock)
        assert answer.status == 503 and answer.closed
        assert answer.error()["status"] == "UNAVAILABLE"
        holder.sendall(held[-1:])
        assert read_answer(holder).status == 200


# --- timeouts ----------------------------------------------------------------------------


@pytest.fixture
def quick_timeouts(tmp_path: Path, simulator: Simulator) -> Iterator[Gateway]:
    handle, process = start_gateway(
        tmp_path,
        "--upstream",
        simulator.url,
        env={
            "KNOWCTL_AUTH_MODE": "anonymous",
            "KNOWCTL_USER_LIMITS": "none",
            "KNOWCTL_CLIENT_HEADER_TIMEOUT": "1",
            "KNOWCTL_CLIENT_BODY_TIMEOUT": "1",
        },
    )
    with process:
        yield handle


def dribble(sock: socket.socket, data: bytes, every: float = 0.5, limit: float = 6.0) -> tuple[bytes, float]:
    """Send ``data`` one byte per ``every`` seconds until the server closes the connection;
    (what it sent back, seconds until it closed). Fails after ``limit`` seconds."""
    started = time.monotonic()
    received = b""
    for i in range(len(data)):
        if time.monotonic() - started > limit:
            break
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data[i : i + 1])
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            sock.settimeout(5)
            while chunk := sock.recv(65536):
                received += chunk
            return received, time.monotonic() - started
    raise AssertionError(f"still open after {time.monotonic() - started:.1f}s (received {received!r})")


def test_a_dribbled_head_is_closed_after_the_header_timeout(quick_timeouts: Gateway) -> None:
    port = port_of(quick_timeouts)
    head = post_head(2)
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        received, took = dribble(sock, head * 4)
    assert 0.8 < took < 3.5, took
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert orjson.loads(received.partition(b"\r\n\r\n")[2])["error"]["status"] == "DEADLINE_EXCEEDED"


def test_the_header_timeout_runs_from_the_previous_answer(quick_timeouts: Gateway) -> None:
    """On a kept-alive connection the next head has the header timeout from the end of the
    answer before it; a connection that sends nothing at all is closed without a word."""
    port = port_of(quick_timeouts)
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock).status == 200
        received, took = dribble(sock, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert 0.8 < took < 3.5 and received.startswith(b"HTTP/1.1 408 "), (took, received)
    with socket.create_connection((LOOPBACK, port), timeout=10) as idle:
        started = time.monotonic()
        assert idle.recv(1) == b""
        assert 0.8 < time.monotonic() - started < 3.5


def test_a_dribbled_body_gets_408_after_the_body_timeout(quick_timeouts: Gateway) -> None:
    port = port_of(quick_timeouts)
    body = payload(100, "dribbled")
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(post_head(len(body)))
        received, took = dribble(sock, body)
    assert 0.8 < took < 3.5, took
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"connection: close" in received.lower()
    assert orjson.loads(received.partition(b"\r\n\r\n")[2])["error"]["status"] == "DEADLINE_EXCEEDED"
    # The daemon serves on.
    assert httpx.post(quick_timeouts.url + GENERATE, json=orjson.loads(body)).status_code == 200


def test_a_head_too_large_is_refused(tmp_path: Path) -> None:
    handle, process = start_gateway(tmp_path, "--simulate", env={"KNOWCTL_MAX_HEADER_BYTES": "4096"})
    with process:
        port = port_of(handle)
        big = b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n"
        many = b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + b"x:\r\n" * 150 + b"\r\n"
        for head, pieces in ((big, 1), (big, 8), (many, 1)):
            with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
                step = -(-len(head) // pieces)
                for start in range(0, len(head), step):
                    sock.sendall(head[start : start + step])
                    time.sleep(0.05)
                answer = read_answer(sock)
            assert answer.status == 400 and answer.closed, answer
            assert answer.error()["status"] == "INVALID_ARGUMENT"
        assert httpx.get(handle.url + "/api/health").status_code == 200


# --- connections per client address ----------------------------------------------------------


def health_over(sock: socket.socket) -> Answer:
    sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
    return read_answer(sock)


@pytest.mark.parametrize("trusted", [False, True], ids=["capped", "trusted-proxy"])
def test_connections_per_client_address_are_capped(tmp_path: Path, trusted: bool) -> None:
    env = {"KNOWCTL_MAX_CONNECTIONS_PER_CLIENT": "5"}
    if trusted:
        env["KNOWCTL_TRUSTED_PROXIES"] = "127.0.0.0/8"
    handle, process = start_gateway(tmp_path, "--simulate", env=env)
    with process, contextlib.ExitStack() as stack:
        port = port_of(handle)
        held = [stack.enter_context(socket.create_connection((LOOPBACK, port), timeout=10)) for _ in range(5)]
        for sock in held:
            assert health_over(sock).status == 200  # open and counted
        with socket.create_connection((LOOPBACK, port), timeout=10) as sixth:
            answer = health_over(sixth)
        if trusted:  # the gateway's own proxies carry every visitor: never capped
            assert answer.status == 200
            return
        assert answer.status == 429 and answer.closed, answer
        assert answer.error()["status"] == "RESOURCE_EXHAUSTED"
        assert answer.headers["retry-after"] == "1"
        held.pop().close()
        deadline = time.monotonic() + 3
        while True:  # the server sees the close a moment later
            with socket.create_connection((LOOPBACK, port), timeout=10) as again:
                status = health_over(again).status
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 200


# --- answers sent before the body is in ----------------------------------------------------------


def test_an_early_refusal_reaches_a_client_still_sending(tmp_path: Path, simulator: Simulator) -> None:
    """The gateway answers 413 from the declared length and closes; the client, still sending
    its 8 MiB, reads the 413 instead of meeting a reset."""
    handle, process = start_gateway(
        tmp_path,
        "--upstream",
        simulator.url,
        env={"KNOWCTL_AUTH_MODE": "anonymous", "KNOWCTL_MAX_BODY_BYTES": str(MIB)},
    )
    with process:
        for _ in range(3):
            answer = post(port_of(handle), payload(8 * MIB, "too big"))
            assert answer.status == 413, answer
