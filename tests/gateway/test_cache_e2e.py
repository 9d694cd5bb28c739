"""The cache end to end: two real daemons sharing the real Redis, the simulator upstream."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.cli import run_knowctl
from tests.support.fixtures import Gateway, Simulator, start_gateway

MODEL = "gemini-2.5-flash"
GENERATE = f"/v1beta/models/{MODEL}:generateContent"
STREAM = f"/v1beta/models/{MODEL}:streamGenerateContent"


@pytest.fixture
def pair(tmp_path: Path, simulator: Simulator, redis_url: str) -> Iterator[tuple[Gateway, Gateway]]:
    env = {"KNOWCTL_STORE_URL": redis_url, "KNOWCTL_AUTH_MODE": "anonymous", "KNOWCTL_USER_LIMITS": "none"}
    a, proc_a = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    b, proc_b = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    with proc_a, proc_b:
        yield a, b


def body(text: str | None = None) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text or f"e2e {uuid.uuid4().hex}"}]}]}


def post(gw: Gateway, payload: dict[str, Any], path: str = GENERATE, **headers: str) -> httpx.Response:
    response = httpx.post(gw.url + path, json=payload, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response


def label(response: httpx.Response) -> str:
    return response.headers.get("x-knowctl-cache", "")


def test_an_entry_cached_by_one_daemon_is_an_l2_hit_on_the_other(
    pair: tuple[Gateway, Gateway], simulator: Simulator
) -> None:
    a, b = pair
    payload = body()
    first = post(a, payload)
    assert label(first) == "MISS"
    assert label(post(a, payload)) == "HIT-L1"
    on_b = post(b, payload)
    assert label(on_b) == "HIT-L2"
    assert on_b.json() == first.json()
    assert label(post(b, payload)) == "HIT-L1"
    assert simulator.stats()["served"] == 1


def test_cli_invalidate_makes_both_daemons_miss_l1_included(
    pair: tuple[Gateway, Gateway], simulator: Simulator
) -> None:
    a, b = pair
    topic = f"e2e{uuid.uuid4().hex[:10]}"
    one, two = body(), body()
    for gw in (a, b):  # both requests cached in both daemons' L1
        post(gw, one, **{"x-knowctl-topic": topic})
        post(gw, two, **{"x-knowctl-topic": topic})
    assert label(post(a, one, **{"x-knowctl-topic": topic})) == "HIT-L1"
    assert label(post(b, two, **{"x-knowctl-topic": topic})) == "HIT-L1"
    served = simulator.stats()["served"]

    done = run_knowctl("cache", "invalidate", "topic:*", "--yes", "--limit", "0", env={"KNOWCTL_URL": a.url})
    assert done.returncode == 0, done.stderr
    assert "Removed" in done.stdout

    assert label(post(a, one, **{"x-knowctl-topic": topic})) == "MISS"
    assert label(post(b, two, **{"x-knowctl-topic": topic})) == "MISS"  # b's L1 was dropped too
    assert simulator.stats()["served"] == served + 2


def test_cli_dry_run_shows_count_and_sample(pair: tuple[Gateway, Gateway]) -> None:
    a, _ = pair
    topic = f"dry{uuid.uuid4().hex[:10]}"
    for _ in range(3):
        post(a, body(), **{"x-knowctl-topic": topic})
    out = run_knowctl(
        "cache", "invalidate", f"topic:{topic}:*", "--dry-run", "--json", env={"KNOWCTL_URL": a.url}
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["matched"], result["deleted"], result["remaining"]) == (3, 0, 3)
    assert all(k.startswith(f"topic:{topic}:") for k in result["sample"])
    bad = run_knowctl("cache", "invalidate", "topic:[x]", "--yes", env={"KNOWCTL_URL": a.url})
    assert bad.returncode == 2 and "pattern" in bad.stderr


def test_50_concurrent_identical_requests_across_two_daemons_reach_the_simulator_once(
    pair: tuple[Gateway, Gateway], simulator: Simulator
) -> None:
    a, b = pair
    simulator.configure(latency_ms=400)
    payload = body()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(client.post((a, b)[i % 2].url + GENERATE, json=payload) for i in range(50))
            )

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert len({r.content for r in responses}) == 1
    assert simulator.stats()["served"] == 1
    labels = [label(r) for r in responses]
    assert labels.count("MISS") == 1


def test_no_cache_skips_reading_and_no_store_skips_writing(
    pair: tuple[Gateway, Gateway], simulator: Simulator
) -> None:
    a, _ = pair
    payload = body()
    assert label(post(a, payload, **{"cache-control": "no-store"})) == "MISS"
    assert label(post(a, payload)) == "MISS"  # nothing was stored
    assert label(post(a, payload)) == "HIT-L1"
    bypass = post(a, payload, **{"cache-control": "no-cache"})
    assert "BYPASS" in label(bypass)
    assert simulator.stats()["served"] == 3


def _sse_chunks(data: bytes) -> list[Any]:
    return [orjson.loads(line[5:]) for line in data.split(b"\r\n\r\n") if line.startswith(b"data:")]


def test_streamed_answers_are_replayed_in_both_framings(
    pair: tuple[Gateway, Gateway], simulator: Simulator
) -> None:
    a, b = pair
    payload = body()
    sse = post(a, payload, STREAM + "?alt=sse")
    assert label(sse) == "MISS" and sse.headers["content-type"].startswith("text/event-stream")
    chunks = _sse_chunks(sse.content)
    assert len(chunks) > 1 and chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    array = post(b, payload, STREAM)  # JSON-array framing, from the other daemon's entry
    assert label(array) == "HIT-L2"
    assert orjson.loads(array.content) == chunks
    again = post(b, payload, STREAM + "?alt=sse")
    assert label(again) == "HIT-L1" and _sse_chunks(again.content) == chunks
    assert simulator.stats()["served"] == 1
