"""Provider quota with real processes: three ``knowctl serve`` sharing one real Redis, the
simulator upstream enforcing the same limit as ours, bursts of concurrent requests.

The simulator counts what really reached it (``served``, ``rejected``: its own 429s), so
"never over-admit" is checked where it matters. Each test keeps its burst inside one
window (the queue times out well before the window ends): across windows, the gateway's
clock (Redis TIME at admission) and the simulator's (arrival) differ by the forwarding
time, which this test is not about.

Each test uses its own model names: the session's Redis is shared.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner, Result

from knowctl.commands import quota as quota_cmd
from tests.support.fixtures import Gateway, Simulator, start_gateway
from tests.support.net import LOOPBACK, free_port

WINDOW_S = 10  # long enough that a burst, its queue timeouts and its checks fit in one window
QUEUE_TIMEOUT_S = 1.5


def model() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


def gen_path(name: str, stream: str | None = None) -> str:
    if stream is None:
        return f"/v1beta/models/{name}:generateContent"
    return f"/v1beta/models/{name}:streamGenerateContent{stream}"


def body(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def env(**quota: Any) -> dict[str, str]:
    values = {
        "KNOWCTL_QUOTA_MINUTE_S": WINDOW_S,
        "KNOWCTL_QUEUE_TIMEOUT": QUEUE_TIMEOUT_S,
        "KNOWCTL_USER_LIMITS": "none",
        "KNOWCTL_CACHE_ENABLED": "false",
        # Accuracy under a burst is the point here, not outage handling (test_outage.py): on
        # two shared cores a 300-request burst can hold an event loop past the default 50 ms
        # store timeout, and a daemon that cannot ask the store refuses rather than over-admits.
        "KNOWCTL_STORE_TIMEOUT": 0.5,
        **{f"KNOWCTL_{k.upper()}": v for k, v in quota.items()},
    }
    return {k: str(v) for k, v in values.items()}


@pytest.fixture
def daemons(tmp_path: Path, redis_url: str, simulator: Simulator) -> Iterator[Callable[..., list[Gateway]]]:
    """``daemons(quota_rpm=40)``: three gateways on one Redis with these settings."""
    with ExitStack() as stack:

        def start(**quota: Any) -> list[Gateway]:
            gateways = []
            for _ in range(3):
                handle, process = start_gateway(
                    tmp_path, "--upstream", simulator.url, "--store", redis_url, env=env(**quota)
                )
                stack.enter_context(process)
                gateways.append(handle)
            return gateways

        yield start


async def burst(
    gateways: list[Gateway], requests: list[tuple[str, dict[str, Any], dict[str, str]]]
) -> list[httpx.Response]:
    """Send every (path, body, headers) at once, round-robin over the gateways."""
    limits = httpx.Limits(max_connections=len(requests) + 10, max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(gateways[i % len(gateways)].url + path, json=payload, headers=headers)
                for i, (path, payload, headers) in enumerate(requests)
            )
        )


def check_refusals(responses: list[httpx.Response]) -> None:
    """Every answer is a 200 or our own 429 in Google's shape with an honest Retry-After."""
    for r in responses:
        assert r.status_code in (200, 429), r.text
        if r.status_code == 429:
            error = r.json()["error"]
            assert error["status"] == "RESOURCE_EXHAUSTED"
            retry_after = int(r.headers["retry-after"])
            assert 1 <= retry_after <= WINDOW_S + 1
            retry = [d for d in error.get("details", []) if d.get("@type", "").endswith("RetryInfo")]
            assert retry and retry[0]["retryDelay"].endswith("s")


def stats(gateway: Gateway, name: str) -> dict[str, Any]:
    response = httpx.get(f"{gateway.url}/api/quota/stats", params={"model": name}, timeout=10)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def test_rpm_burst_over_three_daemons_uses_the_whole_limit_and_no_more(
    daemons: Callable[..., list[Gateway]], simulator: Simulator
) -> None:
    three = daemons(quota_rpm=40)
    simulator.configure(rpm=40, window_s=WINDOW_S)
    name = model()
    started = time.monotonic()
    responses = asyncio.run(burst(three, [(gen_path(name), body(f"q{i}"), {}) for i in range(300)]))
    assert time.monotonic() - started < WINDOW_S  # the premise: one window
    check_refusals(responses)
    sim = simulator.stats()
    assert sim["rejected"] == 0
    assert sim["served"] == 40
    assert sum(r.status_code == 200 for r in responses) == 40
    # The three daemons' stats agree: one shared window.
    windows = [stats(g, name)["models"][name]["windows"]["rpm"] for g in three]
    assert [w["used"] for w in windows] == [40, 40, 40]
    counts = [stats(g, name)["models"][name]["counts"] for g in three]
    assert sum(c["admitted"] for c in counts) == 40
    assert sum(c["refused"] for c in counts) == 260


def test_low_priority_stops_at_its_share_and_critical_gets_the_rest(
    daemons: Callable[..., list[Gateway]], simulator: Simulator
) -> None:
    three = daemons(quota_rpm=40)
    simulator.configure(rpm=40, window_s=WINDOW_S)
    name = model()
    low = asyncio.run(
        burst(three, [(gen_path(name), body(f"low{i}"), {"x-knowctl-priority": "low"}) for i in range(150)])
    )
    check_refusals(low)
    assert sum(r.status_code == 200 for r in low) == 24  # 60% of 40
    assert simulator.stats()["served"] == 24
    crit = asyncio.run(
        burst(
            three,
            [(gen_path(name), body(f"crit{i}"), {"x-knowctl-priority": "CRITICAL"}) for i in range(150)],
        )
    )
    check_refusals(crit)
    assert sum(r.status_code == 200 for r in crit) == 16
    sim = simulator.stats()
    assert (sim["served"], sim["rejected"]) == (40, 0)


def test_tpm_burst_with_varied_prompt_sizes(
    daemons: Callable[..., list[Gateway]], simulator: Simulator
) -> None:
    three = daemons(quota_tpm=3000)
    simulator.configure(tpm=3000, window_s=WINDOW_S)
    name = model()
    sizes = [(i * 37) % 97 + 1 for i in range(300)]  # 1..97 tokens each, about 14,700 offered
    requests = [(gen_path(name), body(f"{i:04d}" * size), {}) for i, size in enumerate(sizes)]
    responses = asyncio.run(burst(three, requests))
    check_refusals(responses)
    sim = simulator.stats()
    assert sim["rejected"] == 0
    assert sim["prompt_tokens"] <= 3000
    assert sim["max_tokens_in_window"] <= 3000
    # Filled up to the last request that still fitted: less than one request's worth is left.
    assert sim["prompt_tokens"] > 3000 - max(sizes)
    served = sum(s for s, r in zip(sizes, responses, strict=True) if r.status_code == 200)
    assert served == sim["prompt_tokens"]
    # Reconciliation runs after each answer is sent: give the last ones a moment to land.
    deadline = time.monotonic() + 3
    while (used := stats(three[0], name)["models"][name]["windows"]["tpm"]["used"]) != sim["prompt_tokens"]:
        assert time.monotonic() < deadline, (used, sim["prompt_tokens"])
        time.sleep(0.1)


@pytest.mark.parametrize("framing", ["?alt=sse", ""])
def test_streamed_answer_is_reconciled_from_its_last_chunk(
    daemons: Callable[..., list[Gateway]], simulator: Simulator, framing: str
) -> None:
    three = daemons(quota_tpm=100_000, token_bytes_per_token=2)
    name = model()
    gateway = three[1]
    # 2 bytes per token here, 4 at the simulator: the estimate is twice the real count.
    response = httpx.post(gateway.url + gen_path(name, framing), json=body("x" * 400), timeout=30)
    assert response.status_code == 200
    sim = simulator.stats()
    assert sim["prompt_tokens"] == 100
    deadline = time.monotonic() + 10
    while (used := stats(gateway, name)["models"][name]["windows"]["tpm"]["used"]) != 100:
        assert used == 200, "only the estimate or the real count can be recorded"
        assert time.monotonic() < deadline, "the stream's usage was never reconciled"
        time.sleep(0.05)
    assert stats(gateway, name)["models"][name]["windows"]["tpm"]["reserved"] == 0


def test_quota_stats_command(daemons: Callable[..., list[Gateway]], simulator: Simulator) -> None:
    three = daemons(quota_rpm=5)
    name = model()
    for _ in range(2):
        assert httpx.post(three[0].url + gen_path(name), json=body("hello"), timeout=30).status_code == 200

    def knowctl(*args: str) -> Result:
        # The sub-app itself, in-process: the daemon it talks to is the real one.
        return CliRunner().invoke(quota_cmd.app, ["stats", *args], env={"COLUMNS": "200"})

    done = knowctl("--url", three[0].url, "--json")
    assert done.exit_code == 0, done.output
    data = orjson.loads(done.stdout)
    assert data["models"][name]["windows"]["rpm"]["used"] == 2
    assert data["models"][name]["counts"]["admitted"] == 2
    # Another daemon lists the models it served, or the one asked for: the window is shared.
    other = orjson.loads(knowctl("--url", three[2].url, "--json", "--model", name).stdout)
    assert other["models"][name]["windows"]["rpm"]["used"] == 2
    assert other["models"][name]["counts"]["admitted"] == 0
    table = knowctl("--url", three[0].url)
    assert table.exit_code == 0 and name in table.stdout and "rpm" in table.stdout
    unreachable = knowctl("--url", f"http://{LOOPBACK}:{free_port()}")
    assert unreachable.exit_code == 3
    assert "knowctl serve" in unreachable.stderr
    both = knowctl("--url", three[2].url, "--json", "--watch")
    assert both.exit_code == 2


def test_provider_429_holds_the_model_on_every_daemon(
    daemons: Callable[..., list[Gateway]], simulator: Simulator
) -> None:
    three = daemons(quota_rpm=1000)  # our limit is not what binds: the provider's is
    simulator.configure(rpm=5, window_s=WINDOW_S)
    name = model()
    first = asyncio.run(burst(three, [(gen_path(name), body(f"a{i}"), {}) for i in range(30)]))
    assert sum(r.status_code == 200 for r in first) == 5
    deadline = time.monotonic() + 10
    while not all(stats(g, name)["models"][name]["exhausted"] for g in three):
        assert time.monotonic() < deadline, "the hold did not reach every daemon"
        time.sleep(0.05)
    reached = simulator.stats()
    again = asyncio.run(burst(three, [(gen_path(name), body(f"b{i}"), {}) for i in range(30)]))
    check_refusals(again)
    assert all(r.status_code == 429 for r in again)
    after = simulator.stats()
    assert (after["served"], after["rejected"]) == (reached["served"], reached["rejected"])


def check_openai_refusals(responses: list[httpx.Response]) -> None:
    """On the OpenAI-compatible route a refusal is OpenAI's error shape, with Retry-After."""
    for r in responses:
        assert r.status_code in (200, 429), r.text
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "429"
            assert 1 <= int(r.headers["retry-after"]) <= WINDOW_S + 1


def test_interactions_and_openai_chats_share_the_models_windows_over_three_daemons(
    daemons: Callable[..., list[Gateway]], simulator: Simulator
) -> None:
    three = daemons(quota_rpm=40)
    simulator.configure(rpm=40, window_s=WINDOW_S)
    name = model()
    interaction = ("/v1beta/interactions", lambda i: {"model": name, "input": f"turn {i}"})
    chat = (
        "/v1beta/openai/chat/completions",
        lambda i: {"model": name, "messages": [{"role": "user", "content": f"chat {i}"}]},
    )
    requests = [(path, make(i), {}) for i in range(150) for path, make in (interaction, chat)]
    started = time.monotonic()
    responses = asyncio.run(burst(three, requests))
    assert time.monotonic() - started < WINDOW_S
    check_refusals([r for (path, _, _), r in zip(requests, responses, strict=True) if "openai" not in path])
    check_openai_refusals(
        [r for (path, _, _), r in zip(requests, responses, strict=True) if "openai" in path]
    )
    sim = simulator.stats()
    assert sim["rejected"] == 0 and sim["max_in_window"] == 40
    assert sim["interactions"] + sim["openai_chats"] == 40
    assert sum(r.status_code == 200 for r in responses) == 40
    assert [stats(g, name)["models"][name]["windows"]["rpm"]["used"] for g in three] == [40, 40, 40]


def test_embedding_batches_count_their_items_over_three_daemons(
    daemons: Callable[..., list[Gateway]], simulator: Simulator
) -> None:
    three = daemons(quota_rpm=40)
    simulator.configure(rpm=40, window_s=WINDOW_S)
    name = model()

    def batch(i: int) -> dict[str, Any]:
        texts = [f"passage {i}.{j}" for j in range(5)]
        return {"requests": [{"model": f"models/{name}", "content": {"parts": [{"text": t}]}} for t in texts]}

    path = f"/v1beta/models/{name}:batchEmbedContents"
    responses = asyncio.run(burst(three, [(path, batch(i), {}) for i in range(60)]))
    check_refusals(responses)
    sim = simulator.stats()
    # 40 requests a window, a batch of 5 counting 5: eight batches, every item accounted.
    assert sim["rejected"] == 0 and sim["embedded_items"] == 40 == sim["max_in_window"]
    assert sum(r.status_code == 200 for r in responses) == 8
    assert all(len(r.json()["embeddings"]) == 5 for r in responses if r.status_code == 200)
    assert stats(three[0], name)["models"][name]["windows"]["rpm"]["used"] == 40


def test_a_background_interaction_is_reconciled_when_a_daemon_sees_it_completed(
    daemons: Callable[..., list[Gateway]], simulator: Simulator
) -> None:
    three = daemons(quota_tpm=100_000, token_bytes_per_token=2)
    simulator.configure(background_ms=300)
    name = model()
    # 2 bytes per token here, 4 at the simulator: the reservation is twice the real count.
    made = httpx.post(
        three[0].url + "/v1beta/interactions",
        json={"model": name, "input": "x" * 400, "background": True},
        timeout=30,
    )
    assert made.status_code == 200, made.text
    assert made.json()["status"] == "in_progress"
    tpm = lambda: stats(three[0], name)["models"][name]["windows"]["tpm"]["used"]  # noqa: E731
    assert tpm() == 200  # no usage yet: the reservation stands
    # Another daemon polls it: the record is shared, and so is the correction.
    deadline = time.monotonic() + 10
    while True:
        got = httpx.get(f"{three[2].url}/v1beta/interactions/{made.json()['id']}", timeout=30)
        assert got.status_code == 200, got.text
        if got.json()["status"] == "completed":
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert got.json()["usage"]["total_input_tokens"] == 100
    assert tpm() == 100
    assert stats(three[1], name)["models"][name]["windows"]["tpm"]["reserved"] == 0


def test_pass_through_callers_spend_their_own_quota_not_each_others(
    tmp_path: Path, redis_url: str, simulator: Simulator
) -> None:
    """Callers that bring their own Google credentials spend their own projects' quota: the
    windows are kept per verified credential (hashed), so one caller's use does not refuse
    another. A credential's first call, before Google has accepted it, shares the model's."""
    handle, process = start_gateway(
        tmp_path, "--upstream", simulator.url, "--store", redis_url, env=env(quota_rpm=2)
    )
    name = model()
    with process, httpx.Client(base_url=handle.url, timeout=30) as client:

        def call(key: str) -> int:
            return client.post(gen_path(name), json=body(key), headers={"x-goog-api-key": key}).status_code

        # a's first call (unverified) takes 1 of the model's 2; then 2 of a's own, then full.
        assert [call("AIza-caller-a") for _ in range(4)] == [200, 200, 200, 429]
        assert [call("AIza-caller-b") for _ in range(3)] == [200, 200, 200]  # a's use is not b's
        assert call("AIza-caller-c") == 429  # the model's own window, for the unverified: full
        data = httpx.get(f"{handle.url}/api/quota/stats", timeout=10).json()
    own = {key: m for key, m in data["models"].items() if key.startswith(f"{name}/cred-")}
    assert len(own) == 2 and all(len(key) == len(name) + 1 + 37 for key in own)  # by hash, never the key
    assert sorted(m["windows"]["rpm"]["used"] for m in own.values()) == [2, 2]
    assert data["models"][name]["windows"]["rpm"]["used"] == 2  # a's and b's first calls
    assert "AIza-caller" not in str(data)


def test_a_full_model_falls_back_along_its_chain_unless_the_caller_opts_out(
    tmp_path: Path, redis_url: str, simulator: Simulator
) -> None:
    pro, flash = model(), model()
    chains = orjson.dumps({pro: [flash]}).decode()
    limits = orjson.dumps({pro: {"rpm": 2}}).decode()
    order = orjson.dumps({"LOW": ["stale", "queue"]}).decode()
    handle, process = start_gateway(
        tmp_path,
        "--upstream",
        simulator.url,
        "--store",
        redis_url,
        env=env(quota_models=limits, fallbacks=chains, overflow_order=order),
    )
    with process, httpx.Client(base_url=handle.url, timeout=30) as client:

        def call(text: str, **headers: str) -> httpx.Response:
            return client.post(gen_path(pro), json=body(text), headers=headers)

        first = [call(f"q {i}") for i in range(2)]
        assert [r.status_code for r in first] == [200, 200]
        assert all("x-knowctl-model" not in r.headers for r in first)
        moved = call("q 2")  # pro is full: flash serves, and says so
        assert moved.status_code == 200 and moved.headers["x-knowctl-model"] == flash
        assert moved.json()["modelVersion"] == flash
        kept = call("q 3", **{"x-knowctl-fallback": "off"})  # no fallback: the queue, or a 429
        assert kept.status_code == 429 and "x-knowctl-model" not in kept.headers
        low = call("q 4", **{"x-knowctl-priority": "LOW"})  # LOW's order has no fallback
        assert low.status_code == 429 and int(low.headers["retry-after"]) >= 1
        assert call("q 5").headers["x-knowctl-model"] == flash  # the others still fall back
    served = simulator.stats()["by_model"]
    assert (served.get(pro), served.get(flash)) == (2, 2)
