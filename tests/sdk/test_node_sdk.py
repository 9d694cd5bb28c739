"""The official JavaScript SDK, ``@google/genai`` on node, unchanged but for its base URL,
through the gateway.

Each case runs ``node tests/sdk/node/client.mjs BASE_URL KEY SCENARIO [MODEL] [TEXT]``,
which makes one SDK call and prints one JSON line of what the SDK made of the answer. The
reference is the simulator's own deterministic answer (:mod:`knowctl.simulator.answers`)
and, where the SDK's whole view matters, the same script pointed at the simulator directly.

The SDK (the exact version pinned in tests/sdk/node/package.json and its lock) is installed
by ``make test`` (``npm ci --prefix tests/sdk/node``, again whenever the lock changes); node
and npm come from .ci/install-test-deps. Without node or that install the module is skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from knowctl.simulator import answers
from tests.support.fixtures import Gateway, Simulator

NODE_DIR = Path(__file__).parent / "node"
CLIENT = NODE_DIR / "client.mjs"
SDK_PACKAGE = NODE_DIR / "node_modules" / "@google" / "genai" / "package.json"
NODE = shutil.which("node")

if NODE is None:
    pytest.skip("node is not installed (Debian: apt-get install nodejs npm)", allow_module_level=True)
if not SDK_PACKAGE.is_file():
    pytest.skip(
        "@google/genai is not installed in tests/sdk/node: run npm ci --prefix tests/sdk/node",
        allow_module_level=True,
    )

MODEL = "gemini-2.5-flash"
EMBED_MODEL = "gemini-embedding-001"
API_KEY = "node-sdk-key"


def node_client(
    base_url: str,
    scenario: str,
    model: str | None = None,
    text: str | None = None,
    *,
    key: str = API_KEY,
) -> dict[str, Any]:
    """One scenario of client.mjs; its JSON line, or the test fails with the script's stderr."""
    args = [base_url, key, scenario]
    if model is not None or text is not None:
        args.append(model or "")
    if text is not None:
        args.append(text)
    done = subprocess.run(
        [str(NODE), str(CLIENT), *args], capture_output=True, text=True, timeout=60, cwd=NODE_DIR
    )
    assert done.returncode == 0, f"node client.mjs {scenario} exited {done.returncode}:\n{done.stderr}"
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got:\n{done.stdout}"
    result: dict[str, Any] = json.loads(lines[0])
    assert result["scenario"] == scenario
    return result


def expected_usage(model: str, prompt: str) -> dict[str, int]:
    """The usageMetadata the simulator answers ``prompt`` with (its token-counting rule)."""
    text = answers.answer_text(model, [prompt])
    prompt_tokens = answers.prompt_tokens([prompt])
    candidates_tokens = answers.token_count(len(text.encode()))
    return {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": candidates_tokens,
        "totalTokenCount": prompt_tokens + candidates_tokens,
    }


def l1_cache_hits(gateway: Gateway) -> float:
    """The gateway's ``knowctl_cache_requests_total{layer="l1", result="hit"}``."""
    text = httpx.get(f"{gateway.url}/api/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "knowctl_cache_requests":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == {"layer": "l1", "result": "hit"}:
                    return float(sample.value)
    return 0.0


def unique_prompt(what: str) -> str:
    """A prompt of this test alone: the session's gateway remembers answers across tests."""
    return f"{what} ({uuid.uuid4().hex})"


@pytest.fixture
def listed_models_only(simulator: Simulator) -> Iterator[Simulator]:
    """The shared simulator as Google is: only its listed models are served (any other is
    404 NOT_FOUND); it serves every name again afterwards, as the session's other tests expect."""
    simulator.configure(any_model=False)
    try:
        yield simulator
    finally:
        simulator.configure(any_model=True)


def test_installed_sdk_is_the_pinned_one() -> None:
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["@google/genai"]
    locked = json.loads((NODE_DIR / "package-lock.json").read_text())["packages"]
    installed = json.loads(SDK_PACKAGE.read_text())["version"]
    assert locked["node_modules/@google/genai"]["version"] == pinned
    assert installed == pinned, f"tests/sdk/node/node_modules is stale ({installed}): run npm ci there"


def test_generate_then_the_same_call_is_a_cache_hit(gateway: Gateway, simulator: Simulator) -> None:
    prompt = unique_prompt("Explain why the sea is salty, briefly.")
    hits_before = l1_cache_hits(gateway)

    first = node_client(gateway.url, "generate", MODEL, prompt)
    assert first["text"] == answers.answer_text(MODEL, [prompt])
    assert first["text"].startswith("Simulated answer: ")
    assert first["usageMetadata"] == expected_usage(MODEL, prompt)
    assert all(count > 0 for count in first["usageMetadata"].values())
    assert first["finishReason"] == "STOP"
    assert simulator.stats()["served"] == 1

    second = node_client(gateway.url, "generate", MODEL, prompt)
    assert second == first
    # Answered by the gateway's cache: the simulator served nothing more.
    assert simulator.stats()["served"] == 1
    assert l1_cache_hits(gateway) == hits_before + 1

    # The SDK's whole view through the gateway is what it sees from the upstream itself.
    assert node_client(simulator.url, "generate", MODEL, prompt) == first


def test_stream_has_chunks_that_join_to_the_answer(gateway: Gateway, simulator: Simulator) -> None:
    prompt = unique_prompt("Name three rivers in Europe.")
    streamed = node_client(gateway.url, "stream", MODEL, prompt)
    assert streamed["chunks"] > 1
    assert len(streamed["texts"]) == streamed["chunks"]
    assert all(piece for piece in streamed["texts"])
    assert streamed["text"] == "".join(streamed["texts"]) == answers.answer_text(MODEL, [prompt])
    assert streamed["usageMetadata"] == expected_usage(MODEL, prompt)
    assert streamed["finishReason"] == "STOP"
    stats = simulator.stats()
    assert stats["streams"] == 1 and stats["served"] == 1

    # The same prompt, not streamed: the same text and usage.
    answer = node_client(gateway.url, "generate", MODEL, prompt)
    assert answer["text"] == streamed["text"]
    assert answer["usageMetadata"] == streamed["usageMetadata"]


def test_count_tokens(gateway: Gateway, simulator: Simulator) -> None:
    prompt = unique_prompt("How many tokens is this?")
    counted = node_client(gateway.url, "count", MODEL, prompt)
    assert counted["totalTokens"] == answers.prompt_tokens([prompt]) > 0
    assert counted["totalTokens"] == expected_usage(MODEL, prompt)["promptTokenCount"]
    stats = simulator.stats()
    assert stats["count_tokens"] == 1 and stats["served"] == 0  # no generation, no quota


def test_embed_content(gateway: Gateway, simulator: Simulator) -> None:
    prompt = unique_prompt("Embed this sentence.")
    embedded = node_client(gateway.url, "embed", EMBED_MODEL, prompt)
    # Gemini API mode: the SDK sends batchEmbedContents, one request per content.
    expected = answers.embedding(EMBED_MODEL, {"content": {"parts": [{"text": prompt}]}})
    assert embedded["embeddings"] == [expected]
    assert len(expected) == 8 and any(value != 0 for value in expected)
    assert simulator.stats()["other"] == 1


def test_list_models(gateway: Gateway, simulator: Simulator) -> None:
    listed = node_client(gateway.url, "list")
    configured = simulator.stats()["config"]["models"]
    assert listed["names"] == [f"models/{name}" for name in configured]
    assert f"models/{MODEL}" in listed["names"] and f"models/{EMBED_MODEL}" in listed["names"]
    assert "generateContent" in listed["methods"][f"models/{MODEL}"]
    assert "embedContent" in listed["methods"][f"models/{EMBED_MODEL}"]
    assert simulator.stats()["listings"] == 1


@pytest.mark.parametrize("scenario", ["error", "error-stream"])
def test_unknown_model_is_the_sdks_api_error(
    scenario: str, gateway: Gateway, listed_models_only: Simulator
) -> None:
    model = f"no-such-model-{uuid.uuid4().hex[:8]}"
    refused = node_client(gateway.url, scenario, model, unique_prompt("Anyone there?"))
    assert refused["name"] == "ApiError" and refused["isApiError"] is True
    assert refused["status"] == 404  # ApiError.status: the HTTP status
    assert refused["error"]["code"] == 404
    assert refused["error"]["status"] == "NOT_FOUND"
    assert f"models/{model} is not found" in refused["error"]["message"]
    stats = listed_models_only.stats()
    assert stats["not_found"] == 1 and stats["served"] == 0


def retry_delay(error: dict[str, Any]) -> float | None:
    """The seconds of a google.rpc.RetryInfo among the error's details, if it has one."""
    for detail in error.get("details") or []:
        if detail.get("@type") == "type.googleapis.com/google.rpc.RetryInfo":
            return float(detail["retryDelay"].removesuffix("s"))
    return None


def test_quota_refusals_are_the_sdks_api_error(gateway: Gateway, simulator: Simulator) -> None:
    # A model of this test alone: the gateway holds a model the provider refused.
    model, run = f"quota-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    simulator.configure(rpm=1, window_s=60)
    fits = node_client(gateway.url, "generate", model, f"the one that fits {run}")
    assert fits["text"] == answers.answer_text(model, [f"the one that fits {run}"])

    # The provider's own refusal, relayed.
    relayed = node_client(gateway.url, "error", model, f"one too many {run}")
    assert relayed["name"] == "ApiError" and relayed["status"] == 429
    assert relayed["error"]["code"] == 429 and relayed["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert model in relayed["error"]["message"]
    assert simulator.stats()["rejected"] == 1

    # Then the gateway refuses by itself, unary and streamed, with Google's RetryInfo: the
    # calls no longer reach the provider.
    for scenario in ("error", "error-stream"):
        held = node_client(gateway.url, scenario, model, f"{scenario} while held {run}")
        assert held["name"] == "ApiError" and held["status"] == 429
        assert held["error"]["code"] == 429 and held["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert model in held["error"]["message"]
        delay = retry_delay(held["error"])
        assert delay is not None and 0 < delay <= 60
    stats = simulator.stats()
    assert stats["rejected"] == 1 and stats["served"] == 1


def test_interaction_plain_streamed_and_kept_for_its_owner(gateway: Gateway, simulator: Simulator) -> None:
    prompt = unique_prompt("Explain photosynthesis")
    made = node_client(gateway.url, "interaction", MODEL, prompt)
    assert made["status"] == "completed"
    assert made["text"] == answers.answer_text(MODEL, [prompt])
    assert made["usage"]["total_input_tokens"] == answers.prompt_tokens([prompt])
    assert simulator.stats()["interactions"] == 1

    streamed = node_client(gateway.url, "interaction-stream", MODEL, unique_prompt("Stream it"))
    assert streamed["events"][0] == "interaction.created"
    assert streamed["events"][-1] == "interaction.completed"
    assert "step.delta" in streamed["events"]
    assert simulator.stats()["interactions"] == 2

    # Pass-through mode: the owner is the credential. Its owner reads it back; another key's
    # caller gets the SDK's 404 and Google is never asked.
    kept = node_client(gateway.url, "interaction-get", MODEL, made["id"])
    assert (kept["id"], kept["status"], kept["text"]) == (made["id"], "completed", made["text"])
    accesses = simulator.stats()["interaction_accesses"]
    foreign = node_client(gateway.url, "interaction-get", MODEL, made["id"], key="someone-else")
    assert foreign["status"] == 404, foreign
    assert simulator.stats()["interaction_accesses"] == accesses


def test_embed_content_counts_and_caches_per_item(gateway: Gateway, simulator: Simulator) -> None:
    prompt = unique_prompt("Embed me once.")
    first = node_client(gateway.url, "embed", EMBED_MODEL, prompt)
    again = node_client(gateway.url, "embed", EMBED_MODEL, prompt)
    assert again == first
    assert first["embeddings"] == [answers.embedding(EMBED_MODEL, {"content": {"parts": [{"text": prompt}]}})]
    # The second call was the gateway's: one text, already known.
    assert simulator.stats()["embedded_items"] == 1
