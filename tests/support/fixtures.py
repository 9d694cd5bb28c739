"""Session fixtures: a real simulator process and a real gateway process in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.net import LOOPBACK, free_port, knowctl_process


@dataclass
class Simulator:
    url: str

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/_simulator/stats", timeout=5).json())

    def reset(self) -> None:
        httpx.post(f"{self.url}/_simulator/reset", timeout=5).raise_for_status()

    def configure(self, **changes: Any) -> None:
        httpx.post(f"{self.url}/_simulator/config", json=changes, timeout=5).raise_for_status()


@dataclass
class Gateway:
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def simulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    log = tmp_path_factory.mktemp("simulator") / "simulator.log"
    # Any model name: tests give cases made-up models of their own to keep their quota apart.
    with knowctl_process(
        ["simulate", "--any-model", "--host", LOOPBACK, "--port", str(port)],
        f"{url}/_simulator/stats",
        log_path=log,
    ):
        yield Simulator(url)


def _pristine(simulator: Simulator) -> None:
    simulator.reset()
    simulator.configure(latency_ms=0, rpm=0, tpm=0, window_s=60, chunk_delay_ms=0, fault=None)


@pytest.fixture
def simulator(simulator_process: Simulator) -> Iterator[Simulator]:
    """The shared simulator, with counters, quota and faults reset for this test, and again
    after it: a test that uses the simulator only through a gateway (simulator_process) must
    not meet a quota or fault another test left behind."""
    _pristine(simulator_process)
    yield simulator_process
    _pristine(simulator_process)


def start_gateway(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[Gateway, Any]:
    """A context manager running ``knowctl serve ARGS`` on a free port."""
    port = free_port()
    scheme = "https" if env and "KNOWCTL_TLS_CERT_FILE" in env else "http"  # a daemon serving TLS
    url = f"{scheme}://{LOOPBACK}:{port}"
    log = tmp_path / f"gateway-{port}.log"
    process = knowctl_process(
        ["serve", "--host", LOOPBACK, "--port", str(port), *args],
        f"{url}/api/health",
        env={"KNOWCTL_LOG_FORMAT": "json", **(env or {})},
        log_path=log,
    )
    return Gateway(url, log), process


@pytest.fixture(scope="session")
def gateway(simulator_process: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway process, pass-through credentials, the simulator as upstream. Per-user
    limits are off: the tests that use it make many calls; tests of limits start their own."""
    handle, process = start_gateway(
        tmp_path_factory.mktemp("gateway"),
        "--upstream",
        simulator_process.url,
        env={"KNOWCTL_USER_LIMITS": "none"},
    )
    with process:
        yield handle
