"""A pool of upstream deployments with real processes: three simulators with different quotas
(each the size its deployment declares), one pool over them, three ``knowctl serve`` on one
real Redis, bursts of concurrent calls. The simulators count what really reached them, so
"spend every quota, never over any" is checked where it matters.

Each test uses its own model names: the session's Redis is shared.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from knowctl import cli
from tests.gateway.test_quota_e2e import WINDOW_S, body, burst, check_refusals, env, gen_path
from tests.support.fixtures import Gateway, start_gateway
from tests.support.net import stop_process
from tests.support.simulator import Simulator, simulator_process

QUOTAS = {"a": 5, "b": 10, "c": 15}


@pytest.fixture(scope="module")
def simulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Simulator]]:
    """One simulator per deployment, each its own provider with its own quota."""
    logs = tmp_path_factory.mktemp("pool-simulators")
    with ExitStack() as stack:
        yield {name: stack.enter_context(simulator_process(log_path=logs / f"{name}.log")) for name in QUOTAS}


@pytest.fixture
def pool(
    tmp_path: Path, redis_url: str, simulators: dict[str, Simulator]
) -> Iterator[Callable[..., list[Gateway]]]:
    """``pool(name, orders={...}, daemons=3)``: gateways on one Redis, each with the pool of the
    three simulators declaring ``QUOTAS`` for model ``name``."""
    for name, sim in simulators.items():
        sim.restore()
        sim.configure(rpm=QUOTAS[name], window_s=WINDOW_S)
    with ExitStack() as stack:

        def start(
            model: str,
            orders: dict[str, int] | None = None,
            daemons: int = 3,
            extra: dict[str, dict[str, Any]] | None = None,
            environ: dict[str, str] | None = None,
        ) -> list[Gateway]:
            config = tmp_path / "pool.yaml"
            upstreams = [
                {
                    "name": name,
                    "url": sim.url,
                    "api_key": f"key-{name}",
                    "order": (orders or {}).get(name, 0),
                    "models": {model: {"rpm": QUOTAS[name]}},
                    **(extra or {}).get(name, {}),
                }
                for name, sim in simulators.items()
            ]
            config.write_text(yaml.safe_dump({"upstreams": upstreams}))
            gateways = []
            for _ in range(daemons):
                handle, process = start_gateway(
                    tmp_path,
                    "--store",
                    redis_url,
                    env={
                        **env(),
                        "KNOWCTL_CONFIG": str(config),
                        "KNOWCTL_AUTH_MODE": "anonymous",
                        **(environ or {}),
                    },
                )
                stack.enter_context(process)
                gateways.append(handle)
            return gateways

        yield start


def served(simulators: dict[str, Simulator]) -> dict[str, int]:
    return {name: int(sim.stats()["served"]) for name, sim in simulators.items()}


def test_a_burst_spends_every_deployments_quota_and_no_more(
    pool: Callable[..., list[Gateway]], simulators: dict[str, Simulator]
) -> None:
    name = f"pool-{uuid.uuid4().hex[:10]}"
    three = pool(name)
    total = sum(QUOTAS.values())
    responses = asyncio.run(burst(three, [(gen_path(name), body(f"q {i}"), {}) for i in range(3 * total)]))
    check_refusals(responses)
    ok = [r for r in responses if r.status_code == 200]
    # Callers see no 429 while any deployment has room: every unit of every quota is used.
    assert len(ok) == total
    assert served(simulators) == QUOTAS
    assert all(int(sim.stats()["rejected"]) == 0 for sim in simulators.values())
    by_header = {n: sum(r.headers["x-knowctl-upstream"] == n for r in ok) for n in QUOTAS}
    assert by_header == QUOTAS
    refused = [r for r in responses if r.status_code == 429]
    assert all("x-knowctl-upstream" not in r.headers for r in refused)


def test_the_preferred_deployments_fill_first(
    pool: Callable[..., list[Gateway]], simulators: dict[str, Simulator]
) -> None:
    name = f"pool-{uuid.uuid4().hex[:10]}"
    [gateway] = pool(name, orders={"a": 1, "b": 0, "c": 0}, daemons=1)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        upstreams = [
            client.post(gen_path(name), json=body(f"q {i}")).headers["x-knowctl-upstream"] for i in range(30)
        ]
    # b and c (order 0) take 25 calls between them, level by headroom; a only after.
    assert sorted(upstreams[:25]) == sorted(["b"] * 10 + ["c"] * 15)
    assert upstreams[25:] == ["a"] * 5
    assert served(simulators) == QUOTAS
    stats = httpx.get(f"{gateway.url}/api/quota/stats", params={"model": name}, timeout=10).json()
    deployments = stats["models"][name]["deployments"]
    assert {d: deployments[d]["windows"]["rpm"]["used"] for d in QUOTAS} == QUOTAS
    assert {d: deployments[d]["admitted"] for d in QUOTAS} == QUOTAS


def test_a_provider_429_moves_the_call_and_holds_that_deployment_only(
    pool: Callable[..., list[Gateway]], simulators: dict[str, Simulator]
) -> None:
    name = f"pool-{uuid.uuid4().hex[:10]}"
    [gateway] = pool(name, orders={"a": 0, "b": 1, "c": 1}, daemons=1)
    simulators["a"].configure(rpm=2)  # below what its deployment declares
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        answers = [client.post(gen_path(name), json=body(f"q {i}")) for i in range(12)]
    assert [r.status_code for r in answers] == [200] * 12  # the third tried a, then went on
    upstreams = [r.headers["x-knowctl-upstream"] for r in answers]
    assert upstreams[:2] == ["a", "a"] and set(upstreams[2:]) <= {"b", "c"}
    assert int(simulators["a"].stats()["rejected"]) == 1  # a was asked once more, not again
    stats = httpx.get(f"{gateway.url}/api/quota/stats", params={"model": name}, timeout=10).json()
    assert stats["models"][name]["deployments"]["a"]["held"]["remaining_s"] > 0
    assert stats["models"][name]["exhausted"] is None  # the model is not held everywhere


def test_a_deployment_killed_under_load_loses_no_call(
    tmp_path: Path, redis_url: str, simulators: dict[str, Simulator]
) -> None:
    name = f"pool-{uuid.uuid4().hex[:10]}"
    for sim in simulators.values():
        sim.restore()
    with simulator_process(log_path=tmp_path / "doomed.log") as doomed:
        config = tmp_path / "pool.yaml"
        upstreams = [{"name": "doomed", "url": doomed.url, "order": 0}]
        upstreams += [{"name": n, "url": s.url, "order": 1} for n, s in simulators.items() if n != "a"]
        config.write_text(yaml.safe_dump({"upstreams": upstreams}))
        handle, process = start_gateway(
            tmp_path,
            "--store",
            redis_url,
            env={**env(), "KNOWCTL_CONFIG": str(config), "KNOWCTL_AUTH_MODE": "anonymous"},
        )
        with process:

            async def load() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=handle.url, timeout=30) as client:

                    async def one(i: int) -> httpx.Response:
                        await asyncio.sleep(i * 0.01)  # 2 s of steady arrivals
                        return await client.post(gen_path(name), json=body(f"q {i}"))

                    calls = [asyncio.ensure_future(one(i)) for i in range(200)]
                    await asyncio.sleep(0.5)
                    stop_process(doomed.proc)  # the preferred deployment dies mid-load
                    return await asyncio.gather(*calls)

            answers = asyncio.run(load())
            assert [r.status_code for r in answers] == [200] * 200  # no 5xx, no 429
            upstreams = [r.headers["x-knowctl-upstream"] for r in answers]
            assert upstreams[:20].count("doomed") > 10  # it served while it lived
            assert "doomed" not in upstreams[-100:]  # and no call waited on it after
            stats = httpx.get(f"{handle.url}/api/quota/stats", params={"model": name}, timeout=10).json()
            assert stats["models"][name]["deployments"]["doomed"]["held"] is not None


def test_a_failing_deployment_is_taken_out_then_probed_back_in(
    pool: Callable[..., list[Gateway]], simulators: dict[str, Simulator]
) -> None:
    name = f"pool-{uuid.uuid4().hex[:10]}"
    [gateway] = pool(name, orders={"a": 0, "b": 1, "c": 1}, daemons=1)
    simulators["a"].configure(fault="error500", count=1)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        first = client.post(gen_path(name), json=body("q 0"))
        assert first.status_code == 200 and first.headers["x-knowctl-upstream"] in ("b", "c")
        during = client.post(gen_path(name), json=body("q 1"))
        assert during.headers["x-knowctl-upstream"] in ("b", "c")  # a is out for its back-off
        time.sleep(1.2)  # KNOWCTL_UPSTREAM_BACKOFF_S defaults to 1 s
        after = client.post(gen_path(name), json=body("q 2"))
        assert after.status_code == 200 and after.headers["x-knowctl-upstream"] == "a"  # back in
    assert int(simulators["a"].stats()["faults"]) == 1


def test_upstreams_shows_each_deployment_by_api_and_cli(
    pool: Callable[..., list[Gateway]], simulators: dict[str, Simulator]
) -> None:
    name = f"pool-{uuid.uuid4().hex[:10]}"
    [gateway] = pool(name, orders={"a": 0, "b": 1, "c": 1}, daemons=1)
    for i in range(7):  # a's 5, then 2 more at b or c
        assert (
            httpx.post(f"{gateway.url}{gen_path(name)}", json=body(f"q {i}"), timeout=30).status_code == 200
        )
    data = httpx.get(f"{gateway.url}/api/upstreams", timeout=10).json()
    assert data["pooled"] is True
    by_name = {d["name"]: d for d in data["deployments"]}
    assert list(by_name) == ["a", "b", "c"]
    a = by_name["a"]
    assert (a["credentials"], a["target"], a["serves"]) == ("api-key", simulators["a"].url, [name])
    assert "key-a" not in str(data)  # the secret is never shown
    assert a["models"][name]["windows"]["rpm"]["used"] == 5 and a["models"][name]["health"] == "ok"
    assert a["models"][name]["share_1m"] == round(5 / 7, 4)
    assert sum(by_name[d]["models"][name]["recent"] for d in ("b", "c")) == 2

    result = CliRunner().invoke(cli.app, ["upstreams", "--url", gateway.url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "upstream deployments" in result.output
    row = next(line for line in result.output.splitlines() if line.lstrip("│ ").startswith("a "))
    assert name in row and "rpm" in row and "71%" in row
    as_json = CliRunner().invoke(cli.app, ["upstreams", "--url", gateway.url, "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.output)["deployments"][0]["name"] == "a"
    both = CliRunner().invoke(cli.app, ["upstreams", "--url", gateway.url, "--json", "--watch"])
    assert both.exit_code == 2


def test_service_tiers_follow_the_priority_where_the_caller_chose_none(
    pool: Callable[..., list[Gateway]], simulators: dict[str, Simulator]
) -> None:
    name = f"pool-{uuid.uuid4().hex[:10]}"
    extra = {
        "a": {"service_tiers": {"CRITICAL": "priority", "LOW": "flex"}},
        "c": {"family": "vertex", "project": "pool-p", "location": "us-central1",
              "service_tiers": {"CRITICAL": "priority", "LOW": "dedicated"}},
    }  # fmt: skip
    [gateway] = pool(
        name, orders={"a": 0, "b": 1, "c": 0}, daemons=1, extra=extra,
        environ={"KNOWCTL_UNAUTHENTICATED_MAX_PRIORITY": "CRITICAL"},
    )  # fmt: skip
    vertex = f"/v1/projects/callers-p/locations/europe-west4/publishers/google/models/{name}:generateContent"

    def call(path: str, priority: str, payload: dict[str, Any] | None = None) -> httpx.Response:
        sent = payload or body(f"{priority} {uuid.uuid4().hex}")
        got = httpx.post(
            f"{gateway.url}{path}", json=sent, headers={"x-knowctl-priority": priority}, timeout=30
        )
        assert got.status_code == 200, got.text
        return got

    for priority in ("CRITICAL", "LOW", "MEDIUM"):
        assert call(gen_path(name), priority).headers["x-knowctl-upstream"] == "a"
        assert call(vertex, priority).headers["x-knowctl-upstream"] == "c"
    call(gen_path(name), "CRITICAL", {**body("own"), "serviceTier": "flex"})  # the caller's choice stands
    assert simulators["a"].stats()["by_tier"] == {"priority": 1, "flex": 2, "standard": 1}
    assert simulators["c"].stats()["by_tier"] == {"shared/priority": 1, "dedicated/-": 1, "-/-": 1}

    simulators["a"].configure(downgrade_priority=True)
    assert call(gen_path(name), "CRITICAL").headers["x-gemini-service-tier"] == "standard"
    exposition = httpx.get(f"{gateway.url}/api/metrics", timeout=10).text
    assert 'knowctl_upstream_service_tier_downgrades_total{deployment="a"' in exposition
    assert 'knowctl_upstream_service_tier_requests_total{deployment="a",tier="priority"} 2.0' in exposition


def test_a_model_no_deployment_serves_is_a_404_in_googles_shape(pool: Callable[..., list[Gateway]]) -> None:
    [gateway] = pool(f"pool-{uuid.uuid4().hex[:10]}", daemons=1)
    response = httpx.post(f"{gateway.url}{gen_path('not-in-the-pool')}", json=body("q"), timeout=10)
    assert response.status_code == 404
    error: dict[str, Any] = response.json()["error"]
    assert error["status"] == "NOT_FOUND" and "not-in-the-pool" in error["message"]


def test_learned_capacity_converges_on_a_hidden_limit(
    tmp_path: Path, redis_url: str, simulators: dict[str, Simulator]
) -> None:
    """A deployment that declares no limit (Vertex's Dynamic Shared Quota), a provider that
    serves 10 a window and refuses past it: the gateway learns the 10 and stops asking for more."""
    window, hidden = 2, 10
    sim = simulators["a"]
    sim.restore()
    sim.configure(rpm=hidden, window_s=window)
    config = tmp_path / "pool.yaml"
    config.write_text(
        yaml.safe_dump({"upstreams": [{"name": "dsq", "url": sim.url, "learned_start_rpm": 5}]})
    )
    environ = {
        **env(),
        "KNOWCTL_CONFIG": str(config),
        "KNOWCTL_AUTH_MODE": "anonymous",
        "KNOWCTL_QUOTA_MINUTE_S": str(window),
        "KNOWCTL_QUEUE_TIMEOUT": "0.3",
    }
    handle, process = start_gateway(tmp_path, "--store", redis_url, env=environ)
    name = f"pool-{uuid.uuid4().hex[:10]}"
    with process:

        async def load(seconds: float, rate: float) -> list[int]:
            async with httpx.AsyncClient(base_url=handle.url, timeout=30) as client:

                async def one(i: int) -> int:
                    await asyncio.sleep(i / rate)
                    return (await client.post(gen_path(name), json=body(f"q {i}"))).status_code

                return list(await asyncio.gather(*(one(i) for i in range(int(seconds * rate)))))

        asyncio.run(load(3 * window, 10))  # three windows to learn in
        before = sim.stats()
        statuses = asyncio.run(load(2 * window, 10))  # then two more, measured
        after = sim.stats()
        data = httpx.get(f"{handle.url}/api/upstreams", timeout=10).json()
    learned = data["deployments"][0]["models"][name]["learned"]
    assert 0.8 * hidden <= learned["limit"] <= 1.2 * hidden, learned
    assert learned["refusals"] >= 1 and learned["probing"] is False
    forwarded = (after["served"] + after["rejected"]) - (before["served"] + before["rejected"])
    refused = after["rejected"] - before["rejected"]
    assert refused <= 0.1 * forwarded, (refused, forwarded)  # the provider barely says no any more
    assert statuses.count(200) >= 0.8 * 2 * hidden  # and most of what it serves is used


def test_calls_cross_families_only_when_the_pool_allows_it(
    tmp_path: Path, redis_url: str, simulators: dict[str, Simulator]
) -> None:
    """A Gemini API call served by a Vertex deployment and back, each rewritten into the
    deployment's own path (the simulator tells the families apart by the tier it reads: the
    body's serviceTier on the Gemini API, the request-type headers on Vertex)."""
    vertex_sim, gemini_sim = simulators["b"], simulators["c"]
    for sim in (vertex_sim, gemini_sim):
        sim.restore()
    name = f"pool-{uuid.uuid4().hex[:10]}"
    pool = [
        {"name": "vx", "family": "vertex", "project": "mine", "location": "us-central1", "url": vertex_sim.url,
         "credentials": None, "service_tiers": {"MEDIUM": "dedicated"}, "models": [name]},
    ]  # fmt: skip
    gemini_path = f"/v1beta/models/{name}:generateContent"
    vertex_path = f"/v1/projects/theirs/locations/asia-east1/publishers/google/models/{name}:generateContent"
    for crossing in (False, True):
        config = tmp_path / f"cross-{crossing}.yaml"
        config.write_text(yaml.safe_dump({"upstreams": pool, "upstreams_cross_family": crossing}))
        environ = {**env(), "KNOWCTL_CONFIG": str(config), "KNOWCTL_AUTH_MODE": "anonymous"}
        handle, process = start_gateway(tmp_path, "--store", redis_url, env=environ)
        with process:
            answer = httpx.post(
                handle.url + gemini_path, json={"contents": [{"parts": [{"text": "hi"}]}]}, timeout=30
            )
            native = httpx.post(handle.url + vertex_path, json=body("hi"), timeout=30)
        assert native.status_code == 200 and native.headers["x-knowctl-upstream"] == "vx"
        if not crossing:
            assert answer.status_code == 404  # no Gemini API deployment serves it
            continue
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-knowctl-upstream"] == "vx"
        assert answer.json()["candidates"][0]["content"]["parts"][0]["text"]
    # Both crossing and native calls reached Vertex as Vertex calls, with the deployment's tier.
    assert vertex_sim.stats()["by_tier"] == {"dedicated/-": 3}
    assert vertex_sim.stats()["bad_requests"] == 0  # the role Vertex wants was filled in


@pytest.mark.parametrize("items", ["true", "false"])  # cached per text, or forwarded whole
def test_an_embedding_batch_moves_to_another_deployment_after_a_429(
    pool: Callable[..., list[Gateway]], simulators: dict[str, Simulator], items: str
) -> None:
    name = f"pool-{uuid.uuid4().hex[:10]}"
    environ = {"KNOWCTL_CACHE_ENABLED": items}
    [gateway] = pool(name, orders={"a": 0, "b": 1, "c": 1}, daemons=1, environ=environ)
    simulators["a"].configure(rpm=2)  # a batch of 2 counts 2: the second batch is refused at a

    def batch(tag: str) -> httpx.Response:
        texts = [f"{tag} {j}" for j in range(2)]
        payload = {
            "requests": [{"model": f"models/{name}", "content": {"parts": [{"text": t}]}} for t in texts]
        }
        return httpx.post(f"{gateway.url}/v1beta/models/{name}:batchEmbedContents", json=payload, timeout=30)

    first, second = batch("one"), batch("two")
    assert first.status_code == 200 and first.headers["x-knowctl-upstream"] == "a"
    assert second.status_code == 200, second.text
    assert second.headers["x-knowctl-upstream"] in ("b", "c") and len(second.json()["embeddings"]) == 2
    assert int(simulators["a"].stats()["rejected"]) == 1


def test_a_tier_the_provider_limits_apart_counts_in_windows_of_its_own(
    pool: Callable[..., list[Gateway]], simulators: dict[str, Simulator]
) -> None:
    name = f"pool-{uuid.uuid4().hex[:10]}"
    extra = {
        "a": {
            "service_tiers": {"CRITICAL": "priority"},
            "models": {name: {"rpm": 5, "tiers": {"priority": {"rpm": 2}}}},
        }
    }
    [gateway] = pool(
        name, orders={"a": 0, "b": 1, "c": 1}, daemons=1, extra=extra,
        environ={"KNOWCTL_UNAUTHENTICATED_MAX_PRIORITY": "CRITICAL"},
    )  # fmt: skip

    def served_by(priority: str) -> str:
        got = httpx.post(
            f"{gateway.url}{gen_path(name)}",
            json=body(uuid.uuid4().hex),
            headers={"x-knowctl-priority": priority},
            timeout=30,
        )
        assert got.status_code == 200, got.text
        return got.headers["x-knowctl-upstream"]

    # Priority calls fill a's priority windows (2), then go where a tier is not kept apart.
    simulators["a"].configure(rpm=0)  # the provider serves what each tier's windows allow
    critical = [served_by("CRITICAL") for _ in range(3)]
    assert critical[:2] == ["a", "a"] and critical[2] in ("b", "c")
    assert [served_by("MEDIUM") for _ in range(5)] == ["a"] * 5  # a's standard windows: untouched by them
    assert served_by("MEDIUM") in ("b", "c")
    assert simulators["a"].stats()["by_tier"] == {"priority": 2, "standard": 5}
    stats = httpx.get(f"{gateway.url}/api/quota/stats", params={"model": name}, timeout=10).json()
    lanes = stats["models"][name]["deployments"]
    assert lanes["a.priority"]["windows"]["rpm"]["used"] == 2 and lanes["a"]["windows"]["rpm"]["used"] == 5
