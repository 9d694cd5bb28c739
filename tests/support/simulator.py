"""A real ``knowctl simulate`` process on a free loopback port, with its control endpoints."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import LOOPBACK, free_port, stop_process, wait_http

DEFAULTS: dict[str, Any] = {
    "latency_ms": 0,
    "chunk_delay_ms": 0,
    "chunks": 4,
    "rpm": 0,
    "tpm": 0,
    "window_s": 60,
    "fault": None,
    "downgrade_priority": False,
}


@dataclass
class Simulator:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None = None

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_simulator/stats", timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def reset(self) -> None:
        httpx.post(f"{self.url}/_simulator/reset", timeout=10).raise_for_status()

    def configure(self, **changes: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/_simulator/config", json=changes, timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def restore(self) -> None:
        """Back to the defaults, with zeroed counters and an empty quota window."""
        self.configure(**DEFAULTS)
        self.reset()


@contextlib.contextmanager
def simulator_process(
    *args: str, log_path: Path | None = None, timeout: float = 30.0, any_model: bool = True
) -> Iterator[Simulator]:
    """Run ``python -m knowctl simulate --port P ARGS``.
    ``any_model``: serve every model name, so that tests may give a case a model (and so a
    quota window) of its own; False serves only the listed models, as Google does."""
    port = free_port()
    if any_model:
        args = ("--any-model", *args)
    url = f"http://{LOOPBACK}:{port}"
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "knowctl", "simulate", "--host", LOOPBACK, "--port", str(port), *args],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"{url}/_simulator/stats", timeout=timeout, proc=proc)
        yield Simulator(url=url, proc=proc, log_path=log_path)
    finally:
        stop_process(proc)
        if log_path:
            out.close()  # type: ignore[union-attr]
