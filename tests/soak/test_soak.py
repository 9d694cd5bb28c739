"""Memory under a stream of distinct prompts: the gateway's RSS (from /proc) stops growing.

Every prompt is new, so every call misses the cache, goes upstream and is saved: the L1
cache is what would grow without bound, and it is bounded by bytes (a small budget here, so
it fills within the run). The store is Redis, as in production: with memory:// the store
itself is in the process; it keeps answers for cache_l2_ttl + cache_stale_ttl (two hours by
default) but within its own byte bound (``memory://?max_bytes=N``), which the memory:// soak
checks. RSS is sampled through the run; after a warm-up, the growth from the second half's
first sample to its last must stay small.

The CI version runs about 25 s; ``-m slow`` runs the long one (KNOWCTL_SOAK_S, default 300).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.fixtures import Simulator, start_gateway

L1_BYTES = 2 * 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def drive(url: str, pid: int, seconds: float, workers: int = 16) -> tuple[int, list[int]]:
    """Distinct prompts (with ~2 KB of text each) for ``seconds``; RSS every second."""
    samples: list[int] = []
    done = 0
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=30) as client:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                text = f"{uuid.uuid4().hex} " * 60
                body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
                # A credential: a pass-through call without one is never cached.
                r = await client.post(
                    f"{url}/v1beta/models/soak:generateContent", json=body, headers={"x-goog-api-key": "soak"}
                )
                assert r.status_code == 200, r.text
                done += 1

        async def sampler() -> None:
            while time.monotonic() < stop:
                samples.append(rss(pid))
                await asyncio.sleep(1.0)

        await asyncio.gather(sampler(), *(worker() for _ in range(workers)))
    return done, samples


def soak(tmp_path: Path, simulator: Simulator, store_url: str, seconds: float, allowed_growth: int) -> None:
    handle, process = start_gateway(
        tmp_path,
        "--upstream",
        simulator.url,
        "--store",
        store_url,
        env={"KNOWCTL_USER_LIMITS": "none", "KNOWCTL_CACHE_L1_MAX_BYTES": str(L1_BYTES)},
    )
    with process as proc:
        done, samples = asyncio.run(drive(handle.url, proc.pid, seconds))
        stats = httpx.get(f"{handle.url}/api/cache/stats", timeout=10).json()["layers"]["l1"]
    half = samples[len(samples) // 2 :]
    growth = max(half) - half[0]
    mb = [round(s / 1e6, 1) for s in samples]
    print(f"soak: {done} distinct prompts in {seconds:.0f}s, L1 {stats['bytes']} bytes, RSS MB {mb}")
    assert stats["evictions"] > 0 and stats["bytes"] <= L1_BYTES  # the L1 filled up and stayed bounded
    assert growth < allowed_growth, f"RSS still grew {growth / 1e6:.1f} MB in the second half: {mb}"


def test_rss_stops_growing_short(tmp_path: Path, simulator: Simulator, redis_url: str) -> None:
    soak(tmp_path, simulator, redis_url, seconds=25, allowed_growth=12 * 1024 * 1024)


def test_rss_stops_growing_on_the_memory_store(tmp_path: Path, simulator: Simulator) -> None:
    # The in-process store's copies are bounded too: 4 MB of them fill within the run.
    soak(
        tmp_path,
        simulator,
        f"memory://?max_bytes={2 * L1_BYTES}",
        seconds=25,
        allowed_growth=12 * 1024 * 1024,
    )


@pytest.mark.slow
def test_rss_stops_growing_long(tmp_path: Path, simulator: Simulator, redis_url: str) -> None:
    soak(
        tmp_path,
        simulator,
        redis_url,
        seconds=float(os.environ.get("KNOWCTL_SOAK_S", "300")),
        allowed_growth=16 * 1024 * 1024,
    )
