"""Embeddings one text at a time: a batch whose texts were embedded before sends only the new
ones upstream, in one call, and answers every text in its order with the provider's vectors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import types

from tests.gateway.test_gateway_security import admin, keys_env, new_key, quota_used
from tests.support.fixtures import Gateway, Simulator, start_gateway

EMBED_MODEL = "embed-items-model"


@pytest.fixture(scope="module")
def gateway(
    simulator_process: Simulator, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    handle, process = start_gateway(
        tmp_path_factory.mktemp("items"),
        "--upstream",
        simulator_process.url,
        "--store",
        redis_url,
        env=keys_env(KNOWCTL_QUOTA_RPM="100000"),
    )
    with process:
        yield handle


def batch(texts: list[str], dims: int = 8) -> dict[str, Any]:
    item = {"taskType": "RETRIEVAL_DOCUMENT", "outputDimensionality": dims}
    return {"requests": [{"content": {"parts": [{"text": t}], "role": "user"}, **item} for t in texts]}


def post(url: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/{EMBED_MODEL}:batchEmbedContents",
        headers={"x-goog-api-key": key},
        json=body,
        timeout=30,
    )


def test_a_batch_of_100_with_90_known_sends_the_10_new_ones(gateway: Gateway, simulator: Simulator) -> None:
    key = new_key(gateway)
    corpus = [f"document number {i} about photosynthesis" for i in range(100)]
    client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=gateway.url))
    config = types.EmbedContentConfig(task_type="RETRIEVAL_DOCUMENT", output_dimensionality=8)
    before_quota = quota_used(gateway, EMBED_MODEL)
    before_calls = simulator.stats()["other"]
    first = client.models.embed_content(model=EMBED_MODEL, contents=corpus, config=config)
    assert first.embeddings is not None and len(first.embeddings) == 100
    assert quota_used(gateway, EMBED_MODEL) == before_quota + 100  # each text is a request

    mixed = corpus[:90] + [f"a new text {i}" for i in range(10)]
    answer = post(gateway.url, key, batch(mixed))
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-knowctl-cache"] == "HIT-PARTIAL"
    assert answer.headers["x-knowctl-cache-items"] == "90/100"
    assert simulator.stats()["other"] == before_calls + 2  # the ten new texts went in one call
    assert quota_used(gateway, EMBED_MODEL) == before_quota + 110
    direct = post(simulator.url, "x", batch(mixed)).json()["embeddings"]
    assert answer.json()["embeddings"] == direct  # the provider's vectors, in the caller's order
    assert [e.values for e in first.embeddings[:90]] == [e["values"] for e in direct[:90]]

    again = post(gateway.url, key, batch(mixed))
    assert again.headers["x-knowctl-cache"] == "HIT" and again.json() == answer.json()
    assert simulator.stats()["other"] == before_calls + 3  # the direct call alone: nothing new


def test_what_changes_a_vector_changes_its_key_and_callers_keep_their_own(
    gateway: Gateway, simulator: Simulator
) -> None:
    key = new_key(gateway)
    texts = ["one text", "another text"]
    assert post(gateway.url, key, batch(texts)).headers["x-knowctl-cache-items"] == "0/2"
    assert post(gateway.url, key, batch(texts)).headers["x-knowctl-cache-items"] == "2/2"
    assert post(gateway.url, key, batch(texts, dims=16)).headers["x-knowctl-cache-items"] == "0/2"
    # Another user (cache scope "user") is not served what this one embedded.
    other = new_key(gateway)
    assert post(gateway.url, other, batch(texts)).headers["x-knowctl-cache-items"] == "0/2"
    assert admin(gateway, "GET", "/api/health").status_code == 200


def test_a_body_that_cannot_be_split_goes_upstream_whole(gateway: Gateway, simulator: Simulator) -> None:
    key = new_key(gateway)
    answer = post(gateway.url, key, {"requests": []})
    assert "x-knowctl-cache-items" not in answer.headers
    assert answer.status_code == 200 and answer.json() == {"embeddings": []}


def test_a_vertex_predict_counts_each_instance(gateway: Gateway, simulator: Simulator) -> None:
    key = new_key(gateway)
    model = "text-embedding-005"
    before = quota_used(gateway, model)
    path = f"/v1/projects/p/locations/us-central1/publishers/google/models/{model}:predict"
    instances = [{"content": f"passage {i}", "task_type": "RETRIEVAL_DOCUMENT"} for i in range(3)]
    answer = httpx.post(
        gateway.url + path, headers={"x-goog-api-key": key}, json={"instances": instances}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [len(p["embeddings"]["values"]) for p in predictions] == [8, 8, 8]
    assert quota_used(gateway, model) == before + 3
    assert simulator.stats()["embedded_items"] == 3
