"""A real HTTP proxy on loopback: tinyproxy (Debian's package; .ci installs it), for the
egress-proxy tests. Its log says which requests went through it."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import LOOPBACK, free_port, stop_process, wait_http


@dataclass
class Proxy:
    url: str
    log: Path

    def seen(self, needle: str) -> int:
        """How many log lines mention ``needle`` (a request line, CONNECT...)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return sum(needle in line for line in text.splitlines())


@contextlib.contextmanager
def tinyproxy(directory: Path) -> Iterator[Proxy]:
    port = free_port()
    log = directory / f"tinyproxy-{port}.log"
    config = directory / f"tinyproxy-{port}.conf"
    config.write_text(
        f'Port {port}\nListen {LOOPBACK}\nTimeout 30\nLogFile "{log}"\nLogLevel Info\n'
        f"MaxClients 64\nAllow {LOOPBACK}\n"
    )
    proc = subprocess.Popen(
        ["tinyproxy", "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(f"http://{LOOPBACK}:{port}/", timeout=10, proc=proc)
        yield Proxy(f"http://{LOOPBACK}:{port}", log)
    finally:
        stop_process(proc)
