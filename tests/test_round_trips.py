"""How many Redis round trips a generation call makes before its upstream call (issue 8's
budget: two). A recording TCP proxy sits between a real gateway process and a real Redis."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx

from tests.support.fixtures import start_gateway
from tests.support.recorder import recording_upstream
from tests.support.tcp_proxy import tcp_proxy

MODEL = "round-trips-model"


def generate(url: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1beta/models/{MODEL}:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": text}]}]},
        timeout=10,
    )


def test_a_miss_makes_two_store_round_trips_before_the_upstream_call(redis_url: str, tmp_path: Path) -> None:
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    with tcp_proxy(host, int(port)) as proxy, recording_upstream() as upstream:
        handle, process = start_gateway(
            tmp_path,
            "--upstream",
            upstream.url,
            "--store",
            proxy.url,
            env={
                "KNOWCTL_AUTH_MODE": "anonymous",
                "KNOWCTL_USER_LIMITS": "100000/minute",  # the caller's limit check
                "KNOWCTL_QUOTA_RPM": "100000",  # provider quota admission
            },
        )
        with process:
            for _ in range(2):  # first use: scripts loaded, the model's hold looked up
                assert generate(handle.url, uuid.uuid4().hex).status_code == 200
            counts = []
            for _ in range(5):
                started = time.monotonic()
                answer = generate(handle.url, uuid.uuid4().hex)  # a distinct prompt: a miss
                assert answer.status_code == 200 and answer.headers["x-knowctl-cache"] == "MISS"
                counts.append(proxy.round_trips(started, upstream.requests[-1].at))
    # Limit check and cache lookup share one round trip, quota admission is the second. Any
    # background work (pub/sub, popularity tallies) could only add to a sample, so the
    # fewest is the pipeline's own count.
    assert min(counts) == 2, counts
