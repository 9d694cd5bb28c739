"""The official google-genai SDK, unchanged but for its base URL, through the gateway.

Every mode a user may run in: Gemini API key, Vertex AI with an OAuth token (api_version
v1 and v1beta1), Vertex express (API key), and the GOOGLE_GEMINI_BASE_URL environment
route. The simulator's own answer, fetched directly with the same SDK, is the reference.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from google import genai
from google.genai import errors, types
from google.oauth2.credentials import Credentials

from tests.support.fixtures import Gateway, Simulator

MODEL = "gemini-2.5-flash"
PROMPT = "Explain why the sea is salty, briefly."

ClientFactory = Callable[[str], genai.Client]


def gemini_key(base_url: str) -> genai.Client:
    return genai.Client(api_key="caller-key", http_options=types.HttpOptions(base_url=base_url))


def vertex(api_version: str) -> ClientFactory:
    def make(base_url: str) -> genai.Client:
        return genai.Client(
            vertexai=True,
            project="demo-project",
            location="us-central1",
            credentials=Credentials(token="static-oauth-token"),  # type: ignore[no-untyped-call]
            http_options=types.HttpOptions(base_url=base_url, api_version=api_version),
        )

    return make


def express(base_url: str) -> genai.Client:
    return genai.Client(
        vertexai=True, api_key="express-key", http_options=types.HttpOptions(base_url=base_url)
    )


MODES: dict[str, ClientFactory] = {
    "gemini-api-key": gemini_key,
    "vertex-v1": vertex("v1"),
    "vertex-v1beta1": vertex("v1beta1"),
    "vertex-express": express,
}


@pytest.fixture(params=sorted(MODES))
def make_client(request: pytest.FixtureRequest) -> ClientFactory:
    return MODES[request.param]


def usage(response: types.GenerateContentResponse) -> tuple[int | None, int | None, int | None]:
    meta = response.usage_metadata
    assert meta is not None
    return meta.prompt_token_count, meta.candidates_token_count, meta.total_token_count


def test_generate_stream_and_count(
    make_client: ClientFactory, gateway: Gateway, simulator: Simulator
) -> None:
    direct, through = make_client(simulator.url), make_client(gateway.url)

    reference = direct.models.generate_content(model=MODEL, contents=PROMPT)
    answer = through.models.generate_content(model=MODEL, contents=PROMPT)
    assert answer.text and answer.text == reference.text
    assert usage(answer) == usage(reference)

    chunks = list(through.models.generate_content_stream(model=MODEL, contents=PROMPT))
    assert len(chunks) > 1
    assert "".join(c.text or "" for c in chunks) == reference.text
    assert usage(chunks[-1]) == usage(reference)

    counted = through.models.count_tokens(model=MODEL, contents=PROMPT)
    assert counted.total_tokens == direct.models.count_tokens(model=MODEL, contents=PROMPT).total_tokens
    assert counted.total_tokens == usage(reference)[0]


def test_quota_error_reaches_the_sdk(
    make_client: ClientFactory, gateway: Gateway, simulator: Simulator
) -> None:
    # A model and prompts of this test alone: the gateway remembers answers (cache) and the
    # provider's refusals (a hold on the model), which must not leak into other tests.
    model, run = f"quota-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    simulator.configure(rpm=1, window_s=60)
    client = make_client(gateway.url)
    client.models.generate_content(model=model, contents=f"the one that fits {run}")
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=model, contents=f"one too many {run}")
    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"


@pytest.mark.parametrize("mode", ["gemini-api-key", "vertex-v1beta1"])
def test_async_client(mode: str, gateway: Gateway, simulator: Simulator) -> None:
    reference_client = MODES[mode](simulator.url)
    reference = reference_client.models.generate_content(model=MODEL, contents=PROMPT)

    async def run() -> tuple[str | None, list[str]]:
        client = MODES[mode](gateway.url)
        async with client.aio as aio:
            answer = await aio.models.generate_content(model=MODEL, contents=PROMPT)
            stream = await aio.models.generate_content_stream(model=MODEL, contents=PROMPT)
            pieces = [chunk.text or "" async for chunk in stream]
        return answer.text, pieces

    text, pieces = asyncio.run(run())
    assert text == reference.text
    assert "".join(pieces) == reference.text


def test_environment_base_url_route(
    monkeypatch: pytest.MonkeyPatch, gateway: Gateway, simulator: Simulator
) -> None:
    for name in (
        "GOOGLE_API_KEY",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", "env-key")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gateway.url)
    client = genai.Client()
    answer = client.models.generate_content(model=MODEL, contents=PROMPT)
    assert answer.text == gemini_key(simulator.url).models.generate_content(model=MODEL, contents=PROMPT).text
    assert simulator.stats()["served"] == 2  # one through the gateway, one direct
