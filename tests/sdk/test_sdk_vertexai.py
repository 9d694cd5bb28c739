"""A second real client: the ``vertexai`` SDK (google-cloud-aiplatform) over REST.

It streams in the JSON-array framing (no ``alt=sse``) and sends gapic headers, so it covers
the paths the google-genai SDK does not. It is heavy: imported only here, never by knowctl.
"""

from __future__ import annotations

import uuid

import pytest

from tests.support.fixtures import Gateway, Simulator

vertexai = pytest.importorskip("vertexai", reason="install the 'vertex' extra: pip install -e '.[vertex]'")

from google.api_core import exceptions  # noqa: E402
from google.auth.credentials import AnonymousCredentials  # noqa: E402
from vertexai.generative_models import GenerativeModel  # noqa: E402

pytestmark = pytest.mark.vertexai
PROMPT = "Name three rivers in Europe."


def model_at(base_url: str, name: str = "gemini-2.5-flash") -> GenerativeModel:
    vertexai.init(
        project="demo-project",
        location="us-central1",
        api_endpoint=base_url,
        api_transport="rest",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
    )
    return GenerativeModel(name)


def test_generate_stream_and_count(gateway: Gateway, simulator: Simulator) -> None:
    reference = model_at(simulator.url).generate_content(PROMPT)
    model = model_at(gateway.url)
    answer = model.generate_content(PROMPT)
    assert answer.text == reference.text
    assert answer.usage_metadata.total_token_count == reference.usage_metadata.total_token_count

    chunks = list(model.generate_content(PROMPT, stream=True))
    assert len(chunks) > 1
    assert "".join(chunk.text for chunk in chunks) == reference.text
    assert chunks[-1].usage_metadata.prompt_token_count == reference.usage_metadata.prompt_token_count

    assert model.count_tokens(PROMPT).total_tokens == reference.usage_metadata.prompt_token_count


def test_quota_error_reaches_the_sdk(gateway: Gateway, simulator: Simulator) -> None:
    simulator.configure(rpm=1, window_s=60)
    model = model_at(gateway.url, f"quota-test-{uuid.uuid4().hex[:8]}")
    run = uuid.uuid4().hex  # prompts of this test alone: the gateway caches answers
    model.generate_content(f"fits {run}")
    with pytest.raises(exceptions.TooManyRequests):
        model.generate_content(f"does not fit {run}")
