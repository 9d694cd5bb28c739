"""``--workers N``: N processes on one port, one shared store, metrics summed across them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx

from tests.support.fixtures import Simulator, start_gateway

GEN = "/v1beta/models/gemini-2.5-flash:generateContent"
SERVED = re.compile(r'^knowctl_http_requests_total\{route="generateContent",status="200"\} (\S+)$', re.M)


def test_workers_share_a_port_and_sum_their_metrics(
    tmp_path: Path, simulator: Simulator, redis_url: str
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    handle, process = start_gateway(
        tmp_path,
        "--upstream",
        simulator.url,
        "--store",
        redis_url,
        "--workers",
        "2",
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "KNOWCTL_USER_LIMITS": "none"},
    )
    with process as proc:
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) >= 2
        for i in range(30):  # a new connection each time, so both workers take some
            response = httpx.post(handle.url + GEN, json={"contents": [{"parts": [{"text": f"w{i}"}]}]})
            assert response.status_code == 200
        for _ in range(8):  # whichever worker answers the scrape, it reports the whole daemon
            match = SERVED.search(httpx.get(handle.url + "/api/metrics").text)
            assert match is not None and float(match.group(1)) == 30
        # Both workers served (each keeps its own counter file), so the sum above is a real one.
        assert len(list(metrics_dir.glob("counter_*.db"))) >= 2
