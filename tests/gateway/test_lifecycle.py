"""Stopping cleanly: SIGTERM under load answers everything accepted, then exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx

from tests.support.fixtures import Simulator, start_gateway

GEN = "/v1beta/models/gemini-2.5-flash:generateContent"


def test_sigterm_under_load_loses_nothing(tmp_path: Path, simulator: Simulator) -> None:
    simulator.configure(latency_ms=800)
    handle, process = start_gateway(
        tmp_path, "--upstream", simulator.url, env={"KNOWCTL_USER_LIMITS": "none"}
    )
    with process as proc:

        async def load() -> list[httpx.Response | BaseException]:
            async with httpx.AsyncClient(timeout=30) as client:
                calls = [
                    client.post(handle.url + GEN, json={"contents": [{"parts": [{"text": f"drain {i}"}]}]})
                    for i in range(40)
                ]
                tasks = [asyncio.ensure_future(c) for c in calls]
                await asyncio.sleep(0.3)  # all accepted and waiting on the slow upstream
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks, return_exceptions=True)

        started = time.monotonic()
        results = asyncio.run(load())
        assert proc.wait(timeout=30) == 0
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results)
    assert time.monotonic() - started < 20
    assert simulator.stats()["served"] == 40
