"""Vertex AI's resources through the gateway with google-genai in Vertex mode (the caller's own
credentials, forwarded): a context cache, a batch prediction job and a video operation polled
through fetchPredictOperation, at the paths the SDK builds under a project and location."""

from __future__ import annotations

import warnings
from typing import Any

from google import genai
from google.genai import types
from google.oauth2.credentials import Credentials

from tests.support.fixtures import Gateway, Simulator
from tests.support.sdk import poll

MODEL = "gemini-2.5-flash"
VEO = "veo-3.0-generate-001"


def vertex(gateway: Gateway) -> Any:  # the SDK's unions, untyped here
    return genai.Client(
        vertexai=True,
        project="demo-project",
        location="us-central1",
        credentials=Credentials(token="static-oauth-token"),  # type: ignore[no-untyped-call]
        http_options=types.HttpOptions(base_url=gateway.url),
    )


def test_a_vertex_cache_batch_and_video_through_the_gateway(gateway: Gateway, simulator: Simulator) -> None:
    client = vertex(gateway)
    contents = [types.Content(role="user", parts=[types.Part(text="Shared context. " * 100)])]
    cache = client.caches.create(model=MODEL, config={"contents": contents, "ttl": "300s"})
    assert cache.name is not None and "/cachedContents/" in cache.name
    assert client.caches.get(name=cache.name).name == cache.name
    client.caches.delete(name=cache.name)

    job = client.batches.create(model=MODEL, src="gs://bucket/input.jsonl")
    assert job.name is not None and "/batchPredictionJobs/" in job.name
    done = poll(lambda: client.batches.get(name=job.name), lambda j: bool(j.done))
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the prompt argument is deprecated in favour of source
        operation = client.models.generate_videos(model=VEO, prompt="a dog", config={"number_of_videos": 1})
    finished = poll(lambda: client.operations.get(operation), lambda o: bool(o.done))
    assert finished.response is not None and finished.response.generated_videos
    assert simulator.stats()["operations_polled"] >= 1
