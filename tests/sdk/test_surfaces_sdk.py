"""The Interactions API, embeddings and the OpenAI-compatible endpoint through the gateway, with
the official clients only (google-genai 3.x, openai): governed like generateContent, and every
interaction its creator's alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import types

from tests.gateway.test_gateway_security import admin, keys_env, new_key, quota_used
from tests.support.fixtures import Gateway, Simulator, start_gateway

MODEL = "surfaces-model"
CHAT_MODEL = "surfaces-chat-model"
LIMITED = "surfaces-limited-model"


@pytest.fixture(scope="module")
def gateway(
    simulator_process: Simulator, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = tmp_path_factory.mktemp("surfaces-config") / "knowctl.yaml"
    config.write_text(f"quota_models:\n  {LIMITED}: {{rpm: 2}}\n")
    handle, process = start_gateway(
        tmp_path_factory.mktemp("surfaces"),
        "--upstream",
        simulator_process.url,
        "--store",
        redis_url,
        env=keys_env(
            KNOWCTL_QUOTA_RPM="100000",
            KNOWCTL_QUOTA_TPM="100000000",
            KNOWCTL_QUOTA_TOKENS="input",
            KNOWCTL_CONFIG=str(config),
            KNOWCTL_QUEUE_TIMEOUT="0.2",
        ),
    )
    with process:
        yield handle


def genai_client(gateway: Gateway, key: str) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=gateway.url))


def openai_client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{gateway.url}/v1beta/openai/", max_retries=0)


def tokens_used(gateway: Gateway, model: str) -> int:
    stats = admin(gateway, "GET", "/api/quota/stats", params={"model": model}).json()
    used: int = stats["models"][model]["windows"]["tpm"]["used"]
    return used


def test_an_interaction_plain_streamed_and_in_the_background(gateway: Gateway, simulator: Simulator) -> None:
    client = genai_client(gateway, new_key(gateway))
    before = quota_used(gateway, MODEL)
    plain = client.interactions.create(model=MODEL, input="Explain photosynthesis")
    assert plain.status == "completed" and plain.output_text.startswith("Simulated answer")
    assert plain.usage is not None and plain.usage.total_input_tokens == 6  # ceil(22 bytes / 4)
    events = list(client.interactions.create(model=MODEL, input="Stream it", stream=True))
    kinds = [e.event_type for e in events]
    assert kinds[0] == "interaction.created" and kinds[-1] == "interaction.completed"
    background = client.interactions.create(model=MODEL, input="Take your time", background=True)
    assert background.status == "in_progress"
    deadline = time.monotonic() + 10
    while client.interactions.get(background.id).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert quota_used(gateway, MODEL) == before + 3
    assert simulator.stats()["interactions"] == 3


def test_a_conversation_reserves_its_history(gateway: Gateway, simulator: Simulator) -> None:
    """Each turn's reservation covers the history Google bills as input: the token window ends
    at what the provider reported, turn after turn (input mode: estimate == usage)."""
    client = genai_client(gateway, new_key(gateway))
    model = f"{MODEL}-conversation"
    previous = None
    reported = []
    for text in ("First question here", "A second one", "And a third"):
        turn = client.interactions.create(model=model, input=text, previous_interaction_id=previous)
        assert turn.usage is not None and turn.usage.total_input_tokens is not None
        reported.append(turn.usage.total_input_tokens)
        previous = turn.id
    assert reported[0] < reported[1] < reported[2]
    assert tokens_used(gateway, model) == sum(reported)


def test_another_key_cannot_read_cancel_delete_or_continue_it(gateway: Gateway, simulator: Simulator) -> None:
    owner = genai_client(gateway, new_key(gateway))
    stranger = genai_client(gateway, new_key(gateway))
    created = owner.interactions.create(model=MODEL, input="Mine alone")
    seen = simulator.stats()["interactions"], simulator.stats()["interaction_accesses"]
    for attempt in (
        lambda: stranger.interactions.get(created.id),
        lambda: stranger.interactions.cancel(created.id),
        lambda: stranger.interactions.delete(created.id),
        lambda: stranger.interactions.create(model=MODEL, input="hi", previous_interaction_id=created.id),
    ):
        with pytest.raises(Exception) as refused:
            attempt()
        assert getattr(refused.value, "status_code", None) == 404
    stats = simulator.stats()
    assert (stats["interactions"], stats["interaction_accesses"]) == seen  # nothing reached Google
    assert owner.interactions.get(created.id).id == created.id
    owner.interactions.delete(created.id)
    with pytest.raises(Exception) as gone:
        owner.interactions.get(created.id)
    assert getattr(gone.value, "status_code", None) == 404


def test_an_interaction_that_leaves_no_state_is_cached(gateway: Gateway, simulator: Simulator) -> None:
    key = new_key(gateway)
    body: dict[str, Any] = {"model": MODEL, "input": "Cache me", "store": False}
    url = f"{gateway.url}/v1/interactions"
    first = httpx.post(url, json=body, headers={"x-goog-api-key": key}, timeout=10)
    second = httpx.post(url, json=body, headers={"x-goog-api-key": key}, timeout=10)
    assert first.headers["x-knowctl-cache"] == "MISS" and second.headers["x-knowctl-cache"].startswith("HIT")
    assert second.json() == first.json()
    revised = httpx.post(url, json=body, headers={"x-goog-api-key": key, "api-revision": "2"}, timeout=10)
    assert revised.headers["x-knowctl-cache"] == "MISS"  # the API revision is in the key
    stored = httpx.post(url, json={**body, "store": True}, headers={"x-goog-api-key": key}, timeout=10)
    assert "x-knowctl-cache" not in stored.headers or stored.headers["x-knowctl-cache"] == "MISS"


def test_openai_chat_embeddings_and_models(gateway: Gateway, simulator: Simulator) -> None:
    client = openai_client(gateway, new_key(gateway))
    before = quota_used(gateway, CHAT_MODEL)
    answer = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content and answer.usage is not None
    assert answer.usage.prompt_tokens == 1
    again = client.chat.completions.create(
        model=f"models/{CHAT_MODEL}", messages=[{"role": "user", "content": "hi"}]
    )
    assert again.choices[0].message.content == answer.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": "stream"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Simulated answer")
    assert quota_used(gateway, CHAT_MODEL) == before + 2  # the second, a cache hit, spent nothing
    vectors = client.embeddings.create(model="surfaces-embed", input=["alpha", "beta"])
    floats = client.embeddings.create(model="surfaces-embed", input=["alpha"], encoding_format="float")
    assert len(vectors.data) == 2  # base64 (the SDK's default) is float32: equal to 1e-6
    assert vectors.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert [m.id for m in client.models.list()]


def test_vertex_openai_endpoint_counts_the_model_without_its_google_prefix(
    gateway: Gateway, simulator: Simulator
) -> None:
    model = "surfaces-vertex-chat"
    base_url = f"{gateway.url}/v1/projects/p/locations/us-central1/endpoints/openapi/"
    client = openai.OpenAI(api_key=new_key(gateway), base_url=base_url, max_retries=0)
    before = quota_used(gateway, model)
    answer = client.chat.completions.create(
        model=f"google/{model}", messages=[{"role": "user", "content": "hello vertex"}]
    )
    assert answer.choices[0].message.content and answer.usage is not None
    vectors = client.embeddings.create(model="google/surfaces-vertex-embed", input=["a", "b", "c"])
    assert len(vectors.data) == 3
    assert quota_used(gateway, model) == before + 1
    assert quota_used(gateway, "surfaces-vertex-embed") == 3


def test_openai_429_in_openais_shape_with_retry_after(gateway: Gateway, simulator: Simulator) -> None:
    client = openai_client(gateway, new_key(gateway))
    for i in range(2):
        client.chat.completions.create(model=LIMITED, messages=[{"role": "user", "content": f"q{i}"}])
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=LIMITED, messages=[{"role": "user", "content": "one more"}])
    assert float(refused.value.response.headers["retry-after"]) > 0
    assert refused.value.body is not None and "type" in refused.value.body  # OpenAI's error shape


def test_genai_embed_content_one_and_a_hundred(gateway: Gateway, simulator: Simulator) -> None:
    client = genai_client(gateway, new_key(gateway))
    one = client.models.embed_content(model="surfaces-embed-2", contents="single")
    assert one.embeddings is not None and len(one.embeddings) == 1
    corpus = [f"text {i}" for i in range(100)]
    before = simulator.stats()["embedded_items"]
    client.models.embed_content(model="surfaces-embed-2", contents=corpus)
    client.models.embed_content(
        model="surfaces-embed-2", contents=corpus[:90] + [f"new {i}" for i in range(10)]
    )
    assert simulator.stats()["embedded_items"] == before + 110  # the simulator saw only 10 again
