"""The simulator's Interactions API, embeddings and OpenAI-compatible endpoint, through the
official clients only (google-genai 3.x, openai), against a real simulator process."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from knowctl.simulator.quota import SlidingWindowQuota
from tests.support.simulator import Simulator, simulator_process

MODEL = "gemini-3-flash"
AGENT = "deep-research-pro-preview-12-2025"
EMBED = "gemini-embedding-001"


@pytest.fixture(scope="module")
def sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    with simulator_process(log_path=tmp_path_factory.mktemp("sim") / "simulator.log") as sim:
        yield sim


@pytest.fixture
def sim(sim_process: Simulator) -> Simulator:
    sim_process.restore()
    sim_process.configure(background_ms=300)
    return sim_process


def genai_client(sim: Simulator, vertexai: bool = False) -> Any:  # the SDK's unions, untyped here
    return genai.Client(
        api_key="k", vertexai=vertexai or None, http_options=types.HttpOptions(base_url=sim.url)
    )


def openai_client(sim: Simulator) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url=f"{sim.url}/v1beta/openai/", max_retries=0)


def tokens(*texts: str) -> int:
    return max(1, math.ceil(sum(len(t.encode()) for t in texts) / 4))


# ---------------------------------------------------------------- pure: a batch counts N requests


def test_quota_admits_a_batch_as_n_requests() -> None:
    quota = SlidingWindowQuota(5, 0, 60)
    assert quota.admit(0.0, 3, requests=3) is None
    assert quota.in_window(0.0) == (3, 3)
    refusal = quota.admit(1.0, 1, requests=3)  # 3 + 3 > 5: two entries must expire, both at t=0
    assert refusal is not None and refusal.metric == "requests" and 58.9 < refusal.retry_after <= 59.0 + 1e-6
    assert quota.admit(60.0, 1, requests=3) is None
    never = quota.admit(60.0, 1, requests=6)
    assert never is not None and never.never_fits


# ---------------------------------------------------------------- interactions (google-genai 3.x)


@pytest.mark.parametrize("vertexai", [False, True], ids=["gemini-api", "vertex-express"])
def test_interaction_create_and_get(sim: Simulator, vertexai: bool) -> None:
    client = genai_client(sim, vertexai)
    created = client.interactions.create(model=MODEL, input="Explain photosynthesis")
    assert created.status == "completed" and created.id.startswith("v1_")
    assert created.output_text is not None and created.output_text.startswith("Simulated answer")
    assert created.usage is not None
    assert created.usage.total_input_tokens == tokens("Explain photosynthesis") == 6
    assert created.usage.total_output_tokens == tokens(created.output_text)
    assert created.usage.total_tokens == created.usage.total_input_tokens + created.usage.total_output_tokens
    again = client.interactions.get(created.id)
    assert again.id == created.id and again.output_text == created.output_text and again.model == MODEL
    other = client.interactions.create(model=MODEL, input="Explain photosynthesis")
    assert other.id != created.id and other.output_text == created.output_text  # deterministic text
    stats = sim.stats()
    assert stats["interactions"] == 2 and stats["served"] == 2 and stats["by_model"] == {MODEL: 2}


def test_interaction_system_instruction_and_max_output_tokens(sim: Simulator) -> None:
    client = genai_client(sim)
    capped = client.interactions.create(
        model=MODEL, input="hello", system_instruction="Be brief", generation_config={"max_output_tokens": 3}
    )
    assert capped.usage is not None and capped.usage.total_input_tokens == tokens("Be brief", "hello")
    assert capped.output_text is not None and len(capped.output_text) == 12
    assert capped.usage.total_output_tokens == 3


def test_interaction_stream_events(sim: Simulator) -> None:
    client = genai_client(sim)
    whole = client.interactions.create(model=MODEL, input="Stream it")
    events = list(client.interactions.create(model=MODEL, input="Stream it", stream=True))
    kinds = [e.event_type for e in events]
    assert kinds[:2] == ["interaction.created", "interaction.status_update"]
    assert kinds[2] == "step.start" and kinds[-2:] == ["step.stop", "interaction.completed"]
    assert kinds.count("step.delta") == 4  # the simulator's default chunks
    assert [e.event_id for e in events] == [f"e{i}" for i in range(1, len(events) + 1)]
    text = "".join(e.delta.text for e in events if e.event_type == "step.delta")
    assert text == whole.output_text
    completed = events[-1].interaction
    assert completed.status == "completed" and completed.usage is not None
    assert completed.usage.total_input_tokens == tokens("Stream it")
    assert completed.usage.total_output_tokens == tokens(text)
    assert sim.stats()["streams"] == 1


def test_interaction_stream_resumes_after_an_event(sim: Simulator) -> None:
    client = genai_client(sim)
    first = list(client.interactions.create(model=MODEL, input="Resume me", stream=True))
    interaction_id = first[0].interaction.id
    rest = list(client.interactions.get(interaction_id, stream=True, last_event_id="e3"))
    assert [e.event_id for e in rest] == [e.event_id for e in first[3:]]
    assert rest[-1].event_type == "interaction.completed"


def test_background_interaction_completes_after_the_delay(sim: Simulator) -> None:
    client = genai_client(sim)
    started = client.interactions.create(agent=AGENT, input="Research caches", background=True)
    assert started.status == "in_progress" and started.agent == AGENT and started.usage is None
    deadline = time.monotonic() + 10
    polled = [client.interactions.get(started.id).status]
    while polled[-1] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
        polled.append(client.interactions.get(started.id).status)
    assert polled[0] == "in_progress" and len(polled) > 1
    done = client.interactions.get(started.id)
    assert done.output_text is not None and done.output_text.startswith("Simulated answer")
    # An agent answers with its own text (the answer is a hash of the name and the input).
    model_answer = client.interactions.create(model=MODEL, input="Research caches")
    assert model_answer.output_text != done.output_text


def test_previous_interaction_id_bills_the_history(sim: Simulator) -> None:
    client = genai_client(sim)
    previous: str | None = None
    reported: list[int] = []
    expected_history = 0
    for text in ("First question here", "A second one", "And a third"):
        turn = client.interactions.create(model=MODEL, input=text, previous_interaction_id=previous)
        assert turn.usage is not None and turn.usage.total_input_tokens is not None
        assert turn.usage.total_output_tokens is not None
        assert turn.usage.total_input_tokens == tokens(text) + expected_history
        expected_history = turn.usage.total_input_tokens + turn.usage.total_output_tokens
        reported.append(turn.usage.total_input_tokens)
        previous = turn.id
    assert reported[0] < reported[1] < reported[2]
    assert sim.stats()["prompt_tokens"] == sum(reported)


def test_unknown_previous_interaction_is_googles_404(sim: Simulator) -> None:
    response = httpx.post(
        f"{sim.url}/v1/interactions",
        json={"model": MODEL, "input": "hi", "previous_interaction_id": "v1_nope"},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND" and response.json()["error"]["code"] == 404
    client = genai_client(sim)  # kept: a client that is garbage-collected closes its connections
    with pytest.raises(Exception) as raised:
        client.interactions.create(model=MODEL, input="hi", previous_interaction_id="v1_nope")
    assert (
        type(raised.value).__name__ == "NotFoundError" and getattr(raised.value, "status_code", None) == 404
    )


def test_cancel_and_delete(sim: Simulator) -> None:
    client = genai_client(sim)
    sim.configure(background_ms=60_000)
    running = client.interactions.create(model=MODEL, input="Long job", background=True)
    cancelled = client.interactions.cancel(running.id)
    assert cancelled.status == "cancelled" and client.interactions.get(running.id).status == "cancelled"
    finished = client.interactions.create(model=MODEL, input="Short job")
    assert client.interactions.cancel(finished.id).status == "completed"  # final: unchanged
    client.interactions.delete(finished.id)
    with pytest.raises(Exception) as gone:
        client.interactions.get(finished.id)
    assert getattr(gone.value, "status_code", None) == 404
    raw = httpx.delete(f"{sim.url}/v1/interactions/{running.id}", timeout=10)
    assert raw.status_code == 200 and raw.json() == {}
    assert httpx.get(f"{sim.url}/v1/interactions/{running.id}", timeout=10).status_code == 404


def test_unstored_interactions_are_not_kept(sim: Simulator) -> None:
    client = genai_client(sim)
    unstored = client.interactions.create(model=MODEL, input="Forget me", store=False)
    assert unstored.status == "completed"
    assert httpx.get(f"{sim.url}/v1/interactions/{unstored.id}", timeout=10).status_code == 404
    assert sim.stats()["stored_interactions"] == 0


def test_interaction_quota_refusal_is_googles_429(sim: Simulator) -> None:
    sim.configure(rpm=1)
    body = {"model": MODEL, "input": "hi"}
    assert httpx.post(f"{sim.url}/v1/interactions", json=body, timeout=10).status_code == 200
    refused = httpx.post(f"{sim.url}/v1/interactions", json=body, timeout=10)
    assert refused.status_code == 429 and refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert sim.stats()["rejected"] == 1


# ---------------------------------------------------------------- embeddings (google-genai 3.x)


@pytest.mark.parametrize("vertexai", [False, True], ids=["gemini-api", "vertex-express"])
def test_embed_content_one_and_a_hundred(sim: Simulator, vertexai: bool) -> None:
    client = genai_client(sim, vertexai)
    config = types.EmbedContentConfig(output_dimensionality=16)
    one = client.models.embed_content(model=EMBED, contents="single", config=config)
    assert one.embeddings is not None and len(one.embeddings) == 1
    assert one.embeddings[0].values is not None and len(one.embeddings[0].values) == 16
    corpus = [f"text {i}" for i in range(100)]
    many = client.models.embed_content(model=EMBED, contents=corpus, config=config)
    assert many.embeddings is not None and len(many.embeddings) == 100
    assert all(e.values is not None and len(e.values) == 16 for e in many.embeddings)
    again = client.models.embed_content(model=EMBED, contents=["text 7", "other"], config=config)
    assert again.embeddings is not None and again.embeddings[0].values == many.embeddings[7].values
    assert again.embeddings[0].values != again.embeddings[1].values
    stats = sim.stats()
    assert stats["embedded_items"] == 103 and stats["in_window"] == 103  # a batch of N counts N


def test_embeddings_count_against_the_quota(sim: Simulator) -> None:
    sim.configure(rpm=3)
    client = genai_client(sim)
    client.models.embed_content(model=EMBED, contents=["a", "b"])
    with pytest.raises(genai_errors.ClientError) as refused:
        client.models.embed_content(model=EMBED, contents=["c", "d"])
    assert refused.value.code == 429
    assert sim.stats()["rejected"] == 1 and sim.stats()["embedded_items"] == 2


# ---------------------------------------------------------------- the OpenAI-compatible endpoint


def test_openai_chat_plain_and_streamed(sim: Simulator) -> None:
    client = openai_client(sim)
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    answer = client.chat.completions.create(model=MODEL, messages=messages)
    content = answer.choices[0].message.content
    assert content is not None and content.startswith("Simulated answer")
    assert answer.choices[0].finish_reason == "stop" and answer.object == "chat.completion"
    assert answer.usage is not None and answer.usage.prompt_tokens == tokens("hi") == 1
    assert answer.usage.completion_tokens == tokens(content)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == answer.usage.total_tokens
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    plain_stream = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    assert all(c.choices for c in plain_stream)  # no usage chunk unless asked
    assert sim.stats()["openai_chats"] == 3 and sim.stats()["streams"] == 2


def test_openai_chat_max_tokens_cuts(sim: Simulator) -> None:
    answer = openai_client(sim).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert answer.choices[0].finish_reason == "length" and answer.choices[0].message.content is not None
    assert len(answer.choices[0].message.content) == 8


def test_openai_embeddings_base64_and_float(sim: Simulator) -> None:
    client = openai_client(sim)
    default = client.embeddings.create(model=EMBED, input=["alpha", "beta"])  # the SDK asks base64
    floats = client.embeddings.create(model=EMBED, input=["alpha", "beta"], encoding_format="float")
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert len(default.data[0].embedding) == 8 and default.data[0].embedding != default.data[1].embedding
    sized = client.embeddings.create(model=EMBED, input="alpha", dimensions=32)
    assert len(sized.data[0].embedding) == 32
    assert sized.data[0].embedding[:8] == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert default.usage.prompt_tokens == tokens("alpha", "beta")
    genai = genai_client(sim)
    genai_vector = genai.models.embed_content(model=EMBED, contents="alpha")
    assert genai_vector.embeddings is not None
    assert genai_vector.embeddings[0].values == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert sim.stats()["embedded_items"] == 6


def test_openai_models(sim: Simulator) -> None:
    client = openai_client(sim)
    listed = [m.id for m in client.models.list()]
    assert "models/gemini-2.5-flash" in listed and f"models/{EMBED}" in listed
    assert client.models.retrieve("gemini-2.5-flash").id == "models/gemini-2.5-flash"


def test_openai_429_is_a_rate_limit_error_with_retry_after(sim: Simulator) -> None:
    sim.configure(rpm=1, window_s=30)
    client = openai_client(sim)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "q1"}])
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "q2"}])
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 30
    assert isinstance(refused.value.body, dict) and refused.value.body["type"] == "rate_limit_error"
    assert sim.stats()["rejected"] == 1


def test_openai_errors_are_openai_shaped(sim: Simulator) -> None:
    client = openai_client(sim)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[])
    assert isinstance(bad.value.body, dict) and bad.value.body["type"] == "invalid_request_error"
    sim.configure(any_model=False)
    try:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    finally:
        sim.configure(any_model=True)
