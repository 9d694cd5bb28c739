"""A Redis stall must cost a stall: real gateways on a private redis-server, steady load of
distinct prompts, and ``CLIENT PAUSE`` of the server mid-load.

- a 1 s pause under load, with provider quota far above the traffic (RPM and RPD): at most
  the pause's worth of refusals, none once the store answers again, and the shared windows
  count every admitted call (what was admitted alone was written back);
- three daemons, a quota close to the offered load, a pause mid-window: the simulator's own
  quota (the same limit) never refuses a call, and after the pause the limit is used whole;
- a 100 ms pause at 256 connections: no outage is declared and no call fails;
- total-token mode, TPM 2,000 and no maxOutputTokens: calls are admitted, and what the
  simulator served stays within the limit plus the exported bound.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.support.fixtures import Gateway, Simulator, start_gateway
from tests.support.redis_server import RedisServer, redis_server

MODEL = "gemini-2.5-flash"


@dataclass
class Call:
    started: float
    status: int
    gateway: int


def gen(model: str = MODEL) -> str:
    return f"/v1beta/models/{model}:generateContent"


def body(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


async def load(
    gateways: list[Gateway],
    stop: asyncio.Event,
    calls: list[Call],
    *,
    workers: int,
    pause_s: float = 0.0,
    model: str = MODEL,
) -> None:
    """Distinct prompts from ``workers`` connections, round-robin over the gateways."""
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker(w: int) -> None:
            n = 0
            while not stop.is_set():
                g = (w + n) % len(gateways)
                n += 1
                started = time.monotonic()
                try:
                    r = await client.post(
                        gateways[g].url + gen(model), json=body(f"{w}-{n}-{uuid.uuid4().hex}")
                    )
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                calls.append(Call(started, status, g))
                if pause_s:
                    await asyncio.sleep(pause_s)

        await asyncio.gather(*(worker(w) for w in range(workers)))


def pause(server: RedisServer, ms: int) -> float:
    """``CLIENT PAUSE ms ALL`` on the server; returns when the pause began (monotonic)."""
    client = redis.Redis.from_url(server.url)
    try:
        began = time.monotonic()
        client.execute_command("CLIENT", "PAUSE", ms, "ALL")
        return began
    finally:
        client.close()


def quota_stats(gateway: Gateway, model: str = MODEL) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(
        f"{gateway.url}/api/quota/stats", params={"model": model}, timeout=10
    ).json()
    return data


def scenario(
    gateways: list[Gateway],
    server: RedisServer,
    *,
    before: float,
    pause_ms: int,
    after: float,
    **load_args: Any,
) -> tuple[list[Call], float]:
    calls: list[Call] = []
    marks: dict[str, float] = {}

    async def run() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(load(gateways, stop, calls, **load_args))
        await asyncio.sleep(before)
        marks["pause"] = await asyncio.to_thread(pause, server, pause_ms)
        await asyncio.sleep(pause_ms / 1000 + after)
        stop.set()
        await runner

    asyncio.run(run())
    return calls, marks["pause"]


def test_a_one_second_stall_costs_at_most_a_second(tmp_path: Path, simulator: Simulator) -> None:
    env = {
        "KNOWCTL_QUOTA_RPM": "100000000",
        "KNOWCTL_QUOTA_RPD": "1000000000",
        "KNOWCTL_USER_LIMITS": "none",
        "KNOWCTL_CACHE_ENABLED": "false",
    }
    with redis_server() as server:
        gateway, process = start_gateway(
            tmp_path, "--upstream", simulator.url, "--store", server.url, env=env
        )
        with process:
            calls, paused = scenario([gateway], server, before=2.0, pause_ms=1000, after=3.0, workers=32)
            served = sum(c.status == 200 for c in calls)
            refused = [round(c.started - paused, 3) for c in calls if c.status != 200]
            back = paused + 1.0
            # Refusals only from calls that met the stall, none once the store answers again.
            assert all(-0.1 < t < 1.0 for t in refused), refused[:20]
            assert len(refused) <= sum(1 for c in calls if paused - 0.1 < c.started < back)
            assert not [c for c in calls if c.started > back + 0.5 and c.status != 200]
            stats = quota_stats(gateway)
            windows = stats["models"][MODEL]["windows"]
            # Every admitted call counted in the shared windows, those admitted alone included.
            assert windows["rpm"]["used"] == served, (windows, served)
            assert windows["rpd"]["used"] == served
            assert windows["rpd"]["remaining"] > 999_000_000  # no day-long lockout
            assert not stats["degraded"] and not stats["recovering"]
            print(f"1 s stall: {len(calls)} calls, {served} served, {len(refused)} refused")


def test_three_daemons_near_the_limit_through_a_stall_mid_window(
    tmp_path: Path, simulator: Simulator
) -> None:
    window_s, limit = 6.0, 60
    # The simulator counts the same limit over a window 0.4 s shorter: its window starts at
    # each request's arrival, ours at its admission (see test_outage.py).
    simulator.configure(rpm=limit, window_s=window_s - 0.4)
    env = {
        "KNOWCTL_QUOTA_RPM": str(limit),
        "KNOWCTL_QUOTA_MINUTE_S": str(window_s),
        "KNOWCTL_MAX_REPLICAS": "3",
        "KNOWCTL_QUEUE_TIMEOUT": "0.5",
        "KNOWCTL_USER_LIMITS": "none",
        "KNOWCTL_CACHE_ENABLED": "false",
    }
    try:
        with redis_server() as server:
            started = [
                start_gateway(tmp_path, "--upstream", simulator.url, "--store", server.url, env=env)
                for _ in range(3)
            ]
            gateways = [g for g, _ in started]
            with started[0][1], started[1][1], started[2][1]:
                # About 12 calls a second offered against 10 a second allowed.
                calls, paused = scenario(
                    gateways,
                    server,
                    before=window_s + 3.0,
                    pause_ms=1000,
                    after=2 * window_s,
                    workers=6,
                    pause_s=0.5,
                )
            sim = simulator.stats()
        assert sim["rejected"] == 0, sim
        assert sim["max_in_window"] <= limit, sim
        # After the stall the fleet uses the whole limit again: a full window later, one
        # window's worth of calls (less what was in flight at its edges) was served, or every
        # call offered when a slow machine offered fewer than the limit.
        late = [c for c in calls if paused + 2.0 + window_s < c.started <= paused + 2.0 + 2 * window_s]
        assert sum(c.status == 200 for c in late) >= min(limit, len(late)) - 6, (
            sum(c.status == 200 for c in late),
            len(late),
        )
        assert {c.gateway for c in late if c.status == 200} == {0, 1, 2}
    finally:
        simulator.configure(rpm=0, window_s=60)


def test_a_100_ms_stall_at_256_connections_is_no_outage(tmp_path: Path, simulator: Simulator) -> None:
    """The default store timeout holds on two cores: 256 connections of wrk, a 100 ms pause,
    not one failed call and no outage declared."""
    env = {"KNOWCTL_QUOTA_RPM": "100000000", "KNOWCTL_USER_LIMITS": "10000000/minute"}
    lua = Path(__file__).resolve().parents[2] / "bench" / "post.lua"
    with redis_server() as server:
        gateway, process = start_gateway(
            tmp_path, "--upstream", simulator.url, "--store", server.url, env=env
        )
        with process:
            paused: list[float] = []
            timer = threading.Timer(2.0, lambda: paused.append(pause(server, 100)))
            timer.start()
            out = subprocess.run(
                ["wrk", "-t2", "-c256", "-d5s", "--timeout", "10s", "-s", str(lua), gateway.url + gen()],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            timer.join()
            log = gateway.log_text()
    assert paused, "the pause never ran"
    assert "Non-2xx" not in out, out
    assert not re.search(r"Socket errors: .*(read|write|timeout) [1-9]", out), out
    assert "unreachable, running degraded" not in log
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert requests > 1000, out
    print(f"100 ms stall at c256: {requests} requests, none failed")


def test_total_token_mode_admits_calls_without_max_output_tokens(
    tmp_path: Path, simulator: Simulator
) -> None:
    """TPM 2,000 counted in total tokens, calls without maxOutputTokens (8,192 by default
    reserved to be safe): two daemons admit them, reserving what answers take, and the
    tokens served stay within the limit plus the bound the gateway exports."""
    window_s, tpm = 4.0, 2000
    env = {
        "KNOWCTL_QUOTA_TPM": str(tpm),
        "KNOWCTL_QUOTA_TOKENS": "total",
        "KNOWCTL_QUOTA_MINUTE_S": str(window_s),
        "KNOWCTL_MAX_REPLICAS": "2",
        "KNOWCTL_USER_LIMITS": "none",
        "KNOWCTL_CACHE_ENABLED": "false",
        "KNOWCTL_QUEUE_TIMEOUT": "2",
    }
    simulator.configure(tpm=0, rpm=0)
    model = f"tokens-{uuid.uuid4().hex[:6]}"
    with redis_server() as server:
        started = [
            start_gateway(tmp_path, "--upstream", simulator.url, "--store", server.url, env=env)
            for _ in range(2)
        ]
        gateways = [g for g, _ in started]
        with started[0][1], started[1][1]:
            calls: list[Call] = []

            async def run() -> None:
                stop = asyncio.Event()
                runner = asyncio.create_task(load(gateways, stop, calls, workers=4, model=model))
                await asyncio.sleep(3 * window_s)
                stop.set()
                await runner

            asyncio.run(run())
            text = httpx.get(gateways[0].url + "/api/metrics", timeout=10).text
    served = [c for c in calls if c.status == 200]
    assert len(served) >= 10, sorted({c.status for c in calls})
    assert "knowctl_quota_unreserved_output_tokens" in text
    stats = simulator.stats()
    answer_tokens = stats["prompt_tokens"] + stats["candidates_tokens"]
    per_call = answer_tokens / max(1, stats["served"])
    # Three windows of 2,000 each (and one more in flight at the edges), not 8,192 a call.
    assert answer_tokens <= 4 * tpm + 8192, (answer_tokens, per_call)
