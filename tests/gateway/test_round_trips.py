"""How many Redis round trips a generation call makes before its upstream call (the
budget is two; the pipeline makes one). A recording TCP proxy sits between a real gateway
process and a real Redis."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.fixtures import start_gateway
from tests.support.recorder import Recorder, recording_upstream
from tests.support.tcp_proxy import Proxy, tcp_proxy

MODEL = "round-trips-model"


def generate(url: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1beta/models/{MODEL}:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": text}]}]},
        timeout=10,
    )


@contextlib.contextmanager
def measured_gateway(
    redis_url: str, tmp_path: Path, env: dict[str, str], pool: int = 0
) -> Iterator[tuple[str, Proxy, Recorder]]:
    """A gateway whose store traffic passes a recording proxy, warmed up (scripts loaded, the
    model's hold looked up): its URL, the proxy and the recording upstream. With ``pool``, a
    pool of that many deployments (all at the recording upstream) declaring the model's rpm."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    with tcp_proxy(host, int(port)) as proxy, recording_upstream() as upstream:
        where = ["--upstream", upstream.url]
        if pool:
            config = tmp_path / "pool.yaml"
            deployments = [
                {"name": f"d{i}", "url": upstream.url, "models": {MODEL: {"rpm": 100000}}}
                for i in range(pool)
            ]
            config.write_text(yaml.safe_dump({"upstreams": deployments}))
            where, env = (
                [],
                {
                    **{k: v for k, v in env.items() if not k.startswith("KNOWCTL_QUOTA_")},
                    "KNOWCTL_CONFIG": str(config),
                },
            )
        handle, process = start_gateway(
            tmp_path,
            *where,
            "--store",
            proxy.url,
            env={"KNOWCTL_AUTH_MODE": "anonymous", "KNOWCTL_USER_LIMITS": "100000/minute", **env},
        )
        with process:
            for _ in range(2):
                assert generate(handle.url, uuid.uuid4().hex).status_code == 200
            yield handle.url, proxy, upstream


def miss(url: str) -> None:
    answer = generate(url, uuid.uuid4().hex)  # a distinct prompt: a miss
    assert answer.status_code == 200 and answer.headers["x-knowctl-cache"] == "MISS"


@pytest.mark.parametrize(("ip_limits", "pool"), [("none", 0), ("100000/minute", 0), ("none", 3)])
def test_a_miss_makes_one_store_round_trip_before_the_upstream_call(
    redis_url: str, tmp_path: Path, ip_limits: str, pool: int
) -> None:
    # The user's limit check, provider quota admission (at whichever of a pool's deployments
    # has room: one script), and the address's check.
    env = {"KNOWCTL_QUOTA_RPM": "100000", "KNOWCTL_IP_LIMITS": ip_limits}
    with measured_gateway(redis_url, tmp_path, env, pool) as (url, proxy, upstream):
        counts = []
        for _ in range(5):
            started = time.monotonic()
            miss(url)
            counts.append(proxy.round_trips(started, upstream.requests[-1].at))
    # Limit check, cache lookup and quota reservation share one round trip. Any background
    # work (pub/sub, popularity tallies) could only add to a sample, so the fewest is the
    # pipeline's own count.
    assert min(counts) == 1, counts


def test_after_the_answer_settle_and_save_share_one_round_trip(redis_url: str, tmp_path: Path) -> None:
    """The token reconciliation (the estimate never matches the real usage here) and the
    cache write are independent: they leave together, one round trip, not one each."""
    # A token window: every reservation is settled against the real usage.
    env = {"KNOWCTL_QUOTA_RPM": "100000", "KNOWCTL_QUOTA_TPM": "100000000"}
    with measured_gateway(redis_url, tmp_path, env) as (url, proxy, upstream):
        counts = []
        for _ in range(5):
            miss(url)
            time.sleep(0.3)  # the writes after the answer happen once the caller has it
            counts.append(proxy.round_trips(upstream.requests[-1].at, time.monotonic()))
    assert min(counts) == 1, counts
