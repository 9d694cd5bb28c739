"""Idle keep-alive: a daemon keeps a connection open longer than the proxies in front of it.

A proxy (nginx upstream keep-alive 60 s, AWS ALB 60 s, Google's load balancers 600 s) sends
its next request on a pooled connection; if the daemon closed it first (uvicorn's default
is 5 s) the request races the close and the proxy's caller gets a 502. These tests reuse a
raw connection after an idle gap longer than that old default, on real daemons.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.net import LOOPBACK, free_port, knowctl_process

# Longer than uvicorn's old 5 s default, shorter than any useful keep-alive.
IDLE_GAP_S = 5.5
HEALTH = b"GET /api/health HTTP/1.1\r\nHost: gateway\r\n\r\n"


def read_answer(sock: socket.socket) -> bytes:
    """One whole answer (the health check's body is small and has a Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """A daemon with the default keep-alive and one with KNOWCTL_KEEP_ALIVE_TIMEOUT=2."""
    logs = tmp_path_factory.mktemp("keepalive")
    ports = {"default": free_port(), "short": free_port()}
    with ExitStack() as stack:
        for name, port in ports.items():
            env = {"KNOWCTL_KEEP_ALIVE_TIMEOUT": "2"} if name == "short" else {}
            stack.enter_context(
                knowctl_process(
                    ["serve", "--simulate", "--host", LOOPBACK, "--port", str(port)],
                    ready_url=f"http://{LOOPBACK}:{port}/api/health",
                    env=env,
                    log_path=Path(logs) / f"{name}.log",
                )
            )
        yield ports


def test_a_connection_reused_after_an_idle_gap_is_answered(daemons: dict[str, int]) -> None:
    with (
        socket.create_connection((LOOPBACK, daemons["default"]), timeout=5) as kept,
        socket.create_connection((LOOPBACK, daemons["short"]), timeout=5) as short,
        socket.create_connection((LOOPBACK, daemons["default"]), timeout=5) as split,
    ):
        for sock in (kept, short, split):
            sock.sendall(HEALTH)
            assert read_answer(sock).startswith(b"HTTP/1.1 200"), sock
        time.sleep(IDLE_GAP_S)
        # The same connection, as a proxy's pool would reuse it.
        kept.sendall(HEALTH)
        assert read_answer(kept).startswith(b"HTTP/1.1 200")
        # A head that arrives in two reads after the gap: its time starts with its first byte,
        # not with the last answer (client_header_timeout is 10 s; the gap counts not).
        split.sendall(HEALTH[:20])
        time.sleep(0.3)
        split.sendall(HEALTH[20:])
        answer = read_answer(split)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        # The setting is what keeps it: at 2 s the daemon has closed its side by now.
        assert closed_by_peer(short)


def test_the_head_deadline_still_holds_on_a_kept_alive_connection(daemons: dict[str, int]) -> None:
    """Measuring from the head's first byte does not let a head trickle in forever."""
    port = free_port()
    with (
        knowctl_process(
            ["serve", "--simulate", "--host", LOOPBACK, "--port", str(port)],
            ready_url=f"http://{LOOPBACK}:{port}/api/health",
            env={"KNOWCTL_CLIENT_HEADER_TIMEOUT": "1"},
        ),
        socket.create_connection((LOOPBACK, port), timeout=5) as sock,
    ):
        sock.sendall(HEALTH)
        assert read_answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(1.5)  # idle longer than the head timeout: still open
        sock.sendall(HEALTH[:20])
        started = time.monotonic()
        answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert 0.8 < time.monotonic() - started < 3
