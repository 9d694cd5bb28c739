"""Batch jobs and long-running operations through the gateway, with the official google-genai
client: created through the provider quota, polled to completion, and each its creator's
alone (another key's get, cancel, delete or listing finds nothing)."""

from __future__ import annotations

import httpx
import pytest
from google.genai import types

from tests.gateway.test_gateway_security import new_key
from tests.sdk.test_files_sdk import client, daemons  # noqa: F401 (the module's two gateways)
from tests.support.fixtures import Gateway, Simulator
from tests.support.sdk import poll, status_of

MODEL = "gemini-2.5-flash"
VEO = "veo-3.1-generate-preview"


@pytest.fixture
def gateway(daemons: tuple[Gateway, Gateway, int]) -> Gateway:  # noqa: F811
    return daemons[0]


def test_a_batch_is_its_creators_alone(gateway: Gateway, simulator: Simulator) -> None:
    owner, stranger = client(gateway, new_key(gateway)), client(gateway, new_key(gateway))
    job = owner.batches.create(
        model=MODEL,
        src=[{"contents": [{"parts": [{"text": "one"}], "role": "user"}]}],
        config={"display_name": "mine"},
    )
    assert job.name is not None and job.name.startswith("batches/")
    assert status_of(lambda: stranger.batches.get(name=job.name)) == 404
    assert status_of(lambda: stranger.batches.cancel(name=job.name)) == 404
    assert status_of(lambda: stranger.batches.delete(name=job.name)) == 404
    assert job.name not in [b.name for b in stranger.batches.list()]
    assert job.name in [b.name for b in owner.batches.list()]
    done = poll(
        lambda: owner.batches.get(name=job.name), lambda b: b.state == types.JobState.JOB_STATE_SUCCEEDED
    )
    assert done.dest is not None and done.dest.inlined_responses
    owner.batches.delete(name=job.name)


def test_an_operation_is_polled_by_its_creator_alone(gateway: Gateway, simulator: Simulator) -> None:
    key, other = new_key(gateway), new_key(gateway)
    # The SDK's generate_videos is Vertex-only in this version: the Gemini API's call by hand.
    started = httpx.post(
        f"{gateway.url}/v1beta/models/{VEO}:predictLongRunning",
        headers={"x-goog-api-key": key},
        json={"instances": [{"prompt": "a dog"}], "parameters": {"sampleCount": 1}},
        timeout=10,
    )
    assert started.status_code == 200, started.text
    name = started.json()["name"]
    operation = types.GenerateVideosOperation(name=name)
    stranger = client(gateway, other)
    assert status_of(lambda: stranger.operations.get(operation)) == 404
    owner = client(gateway, key)
    finished = poll(lambda: owner.operations.get(operation), lambda o: bool(o.done))
    assert finished.response is not None and finished.response.generated_videos
    polled = simulator.stats()["operations_polled"]
    assert status_of(lambda: stranger.operations.get(operation)) == 404
    assert simulator.stats()["operations_polled"] == polled  # refused before it went upstream
    # The video is a file the operation made: its creator's to fetch, nobody else's.
    video = finished.response.generated_videos[0].video
    assert video is not None and owner.files.download(file=video)
    assert status_of(lambda: stranger.files.download(file=video)) == 403
