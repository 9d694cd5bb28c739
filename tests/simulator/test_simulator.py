"""knowctl simulate: pure answer/quota rules, then a real simulator process over HTTP and the genai SDK."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knowctl.errors import parse_retry_delay
from knowctl.simulator import answers
from knowctl.simulator.quota import SlidingWindowQuota
from tests.support.simulator import Simulator, simulator_process

MODEL = "gemini-2.5-flash"
GEMINI = f"/v1beta/models/{MODEL}"
GEMINI_V1 = f"/v1/models/{MODEL}"
VERTEX = f"/v1beta1/projects/p1/locations/us-central1/publishers/google/models/{MODEL}"
EXPRESS = f"/v1beta1/publishers/google/models/{MODEL}"
VERTEX_429 = (
    "Resource exhausted. Please try again later. Please refer to "
    "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details."
)


def request(text: str = "Say hi", **extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}


# ---------------------------------------------------------------- pure: answers


def test_prompt_tokens_follow_the_bytes_over_four_rule() -> None:
    body = request("abcde", systemInstruction={"parts": [{"text": "é"}]})  # 5 + 2 bytes
    assert answers.prompt_tokens(answers.prompt_texts(body)) == 2
    assert answers.prompt_tokens([]) == 1  # at least one, even for a prompt without text
    assert answers.prompt_tokens(["abcd"]) == 1
    assert answers.prompt_tokens(["abcd", "e"]) == 2
    assert answers.count_tokens_request({"generateContentRequest": body, "model": "x"}) == 2


@given(st.lists(st.text(max_size=40), min_size=1, max_size=5))
def test_prompt_tokens_is_ceil_of_utf8_bytes(texts: list[str]) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": t} for t in texts]}]}
    nbytes = sum(len(t.encode()) for t in texts)
    assert answers.count_tokens_request(body) == max(1, math.ceil(nbytes / 4))


def test_answer_is_deterministic_and_a_few_dozen_words() -> None:
    body = orjson.dumps(request("Tell me about caches"))
    one = answers.make_answer(MODEL, orjson.loads(body), body)
    two = answers.make_answer(MODEL, orjson.loads(body), body)
    assert one == two
    assert 24 <= len(one.text.split()) <= 45
    assert one.candidates_tokens == math.ceil(len(one.text.encode()) / 4)
    assert one.finish_reason == "STOP"
    other = answers.make_answer(MODEL, request("Something else"), b"x")
    assert other.text != one.text and other.response_id != one.response_id


def test_max_output_tokens_cuts_the_answer() -> None:
    answer = answers.make_answer(MODEL, request(generationConfig={"maxOutputTokens": 3}), b"")
    assert answer.finish_reason == "MAX_TOKENS"
    assert len(answer.text) == 12 and answer.candidates_tokens == 3
    with pytest.raises(answers.BadRequest):
        answers.make_answer(MODEL, request(generationConfig={"maxOutputTokens": "3"}), b"")


def test_blocked_marker_gives_prompt_feedback_and_no_candidates() -> None:
    answer = answers.make_answer(MODEL, request("please [[blocked]] this"), b"")
    data = answers.response(answer)
    assert "candidates" not in data and data["promptFeedback"] == {"blockReason": "SAFETY"}
    assert answers.stream_chunks(answer) == [data]


@pytest.mark.parametrize(
    "body",
    [{}, {"contents": []}, {"contents": None}, {"contents": ["text"]}, {"contents": "hi"}],
)
def test_missing_or_bad_contents_is_a_bad_request(body: dict[str, Any]) -> None:
    with pytest.raises(answers.BadRequest):
        answers.make_answer(MODEL, body, b"")


@given(st.lists(st.text(alphabet="ab ", max_size=8), max_size=30).map(" ".join), st.integers(1, 8))
def test_split_chunks_join_back(text: str, n: int) -> None:
    pieces = answers.split_chunks(text, n)
    assert "".join(pieces) == text
    assert 1 <= len(pieces) <= n


def test_stream_chunks_carry_usage_and_finish_only_at_the_end() -> None:
    answer = answers.make_answer(MODEL, request(), b"")
    chunks = answers.stream_chunks(answer, 4)
    assert len(chunks) == 4
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == answer.text
    for chunk in chunks[:-1]:
        assert "usageMetadata" not in chunk and "finishReason" not in chunk["candidates"][0]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"] == answers.response(answer)["usageMetadata"]


# ---------------------------------------------------------------- pure: quota

arrivals = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), st.integers(1, 20)), min_size=1, max_size=60
).map(lambda xs: sorted(xs))


@settings(max_examples=300)
@given(arrivals, st.integers(0, 6), st.integers(0, 60), st.sampled_from([0.5, 1.0, 2.0]))
def test_sliding_window_admits_exactly_what_fits(
    events: list[tuple[float, int]], rpm: int, tpm: int, window: float
) -> None:
    quota = SlidingWindowQuota(rpm, tpm, window)
    admitted: list[tuple[float, int]] = []
    for now, tokens in events:
        live = [(t, n) for t, n in admitted if t > now - window]
        fits = (not rpm or len(live) < rpm) and (not tpm or sum(n for _, n in live) + tokens <= tpm)
        refusal = quota.admit(now, tokens)
        assert (refusal is None) == fits
        if refusal is None:
            admitted.append((now, tokens))
        elif not refusal.never_fits:
            # The delay is accurate: once it has passed, the request fits.
            later = now + refusal.retry_after
            still = [(t, n) for t, n in admitted if t > later - window]
            assert (not rpm or len(still) < rpm) and (not tpm or sum(n for _, n in still) + tokens <= tpm)
    # Never over-admit: no span of `window` holds more than the limits.
    for start, _ in admitted:
        span = [(t, n) for t, n in admitted if start <= t < start + window]
        assert not rpm or len(span) <= rpm
        assert not tpm or sum(n for _, n in span) <= tpm
        assert len(span) <= quota.max_in_window
        assert sum(n for _, n in span) <= quota.max_tokens_in_window


@given(st.floats(1e3, 1e9), st.floats(0, 1), st.floats(0.001, 100))
def test_retry_delay_is_enough_at_any_clock_magnitude(base: float, offset: float, window: float) -> None:
    quota = SlidingWindowQuota(1, 0, window)
    assert quota.admit(base, 1) is None
    now = base + offset * window
    refusal = quota.admit(now, 1)
    if refusal is not None:
        assert quota.admit(now + refusal.retry_after, 1) is None


def test_oversized_prompt_never_fits() -> None:
    refusal = SlidingWindowQuota(0, 10, 60).admit(0.0, 11)
    assert refusal is not None and refusal.never_fits and refusal.metric == "tokens"


# ---------------------------------------------------------------- a real simulator process


@pytest.fixture(scope="module")
def sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    log = tmp_path_factory.mktemp("sim") / "simulator.log"
    with simulator_process(log_path=log) as sim:
        yield sim


@pytest.fixture
def sim(sim_process: Simulator) -> Simulator:
    sim_process.restore()
    return sim_process


def post(sim: Simulator, path: str, body: Any = None, content: bytes | None = None) -> httpx.Response:
    if content is None:
        content = orjson.dumps(request() if body is None else body)
    return httpx.post(sim.url + path, content=content, timeout=30)


def test_banner_says_it_is_a_simulator(sim: Simulator) -> None:
    assert sim.log_path is not None
    banner = sim.log_path.read_text()
    assert "SIMULATOR" in banner and "not Google" in banner


@pytest.mark.parametrize("base", [GEMINI, GEMINI_V1, VERTEX, EXPRESS])
def test_generate_content_shape_and_determinism(sim: Simulator, base: str) -> None:
    first = post(sim, base + ":generateContent")
    second = post(sim, base + ":generateContent")
    assert first.status_code == 200 and first.headers["content-type"].startswith("application/json")
    assert first.content == second.content
    data = first.json()
    candidate = data["candidates"][0]
    assert candidate["content"]["role"] == "model" and candidate["finishReason"] == "STOP"
    text = candidate["content"]["parts"][0]["text"]
    assert data["usageMetadata"] == {
        "promptTokenCount": 2,  # "Say hi": 6 bytes
        "candidatesTokenCount": math.ceil(len(text.encode()) / 4),
        "totalTokenCount": 2 + math.ceil(len(text.encode()) / 4),
    }
    assert data["modelVersion"] == MODEL and data["responseId"]


def test_vertexai_sdk_query_is_accepted(sim: Simulator) -> None:
    plain = post(sim, VERTEX.replace("v1beta1", "v1") + ":generateContent")
    odd = post(sim, VERTEX.replace("v1beta1", "v1") + ":generateContent?%24alt=json%3Benum-encoding%3Dint")
    assert odd.status_code == 200 and odd.content == plain.content


def test_max_output_tokens_and_blocked_over_http(sim: Simulator) -> None:
    cut = post(sim, GEMINI + ":generateContent", request(generationConfig={"maxOutputTokens": 2})).json()
    assert cut["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert cut["usageMetadata"]["candidatesTokenCount"] == 2
    blocked = post(sim, GEMINI + ":generateContent", request("x [[blocked]]"))
    assert blocked.status_code == 200
    assert blocked.json()["promptFeedback"] == {"blockReason": "SAFETY"}
    assert "candidates" not in blocked.json()


def full_answer(sim: Simulator, base: str) -> dict[str, Any]:
    data: dict[str, Any] = post(sim, base + ":generateContent").json()
    return data


def check_chunks(chunks: list[dict[str, Any]], whole: dict[str, Any]) -> None:
    assert len(chunks) == 4
    texts = [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks]
    assert "".join(texts) == whole["candidates"][0]["content"]["parts"][0]["text"]
    for chunk in chunks[:-1]:
        assert "finishReason" not in chunk["candidates"][0] and "usageMetadata" not in chunk
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"] == whole["usageMetadata"]


@pytest.mark.parametrize("base", [GEMINI, VERTEX, EXPRESS])
def test_sse_stream(sim: Simulator, base: str) -> None:
    response = post(sim, base + ":streamGenerateContent?alt=sse")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = response.content.split(b"\r\n\r\n")
    assert frames[-1] == b""
    assert all(f.startswith(b"data: ") for f in frames[:-1])
    check_chunks([orjson.loads(f[6:]) for f in frames[:-1]], full_answer(sim, base))
    assert sim.stats()["streams"] == 1


@pytest.mark.parametrize("base", [GEMINI, VERTEX, EXPRESS])
def test_json_array_stream(sim: Simulator, base: str) -> None:
    response = post(sim, base + ":streamGenerateContent")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.content
    assert body.startswith(b"[") and body.endswith(b"\n]")
    pieces = body[1:-2].split(b"\n,\r\n")
    chunks = [orjson.loads(p) for p in pieces]
    assert orjson.loads(body) == chunks
    check_chunks(chunks, full_answer(sim, base))


def test_stream_chunks_arrive_as_separate_pieces(sim: Simulator) -> None:
    sim.configure(chunk_delay_ms=30)
    with httpx.stream(
        "POST",
        sim.url + GEMINI + ":streamGenerateContent?alt=sse",
        content=orjson.dumps(request()),
        timeout=30,
    ) as response:
        frames = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert len(frames) == 4


def test_count_tokens(sim: Simulator) -> None:
    sim.configure(rpm=1)
    gemini = post(sim, GEMINI + ":countTokens", request("abcdefghi"))
    assert gemini.json() == {"totalTokens": 3}
    inner = {"generateContentRequest": {**request("a b c"), "model": f"models/{MODEL}"}}
    assert post(sim, GEMINI + ":countTokens", inner).json() == {"totalTokens": 2}
    vertex = post(sim, VERTEX + ":countTokens", {**request("a b c"), "model": "projects/p/x"})
    assert vertex.json() == {"totalTokens": 2, "totalBillableCharacters": 3}
    assert post(sim, EXPRESS + ":countTokens").json()["totalBillableCharacters"] == 5
    # countTokens spends no quota: the one request of the window is still there.
    assert post(sim, GEMINI + ":generateContent").status_code == 200
    stats = sim.stats()
    assert stats["count_tokens"] == 4 and stats["served"] == 1


def test_other_actions_and_listings(sim: Simulator) -> None:
    embed = post(sim, GEMINI + ":embedContent", {"content": {"parts": [{"text": "hi"}]}})
    assert embed.status_code == 200 and len(embed.json()["embedding"]["values"]) == 8
    assert (
        embed.content == post(sim, GEMINI + ":embedContent", {"content": {"parts": [{"text": "hi"}]}}).content
    )
    models = httpx.get(sim.url + "/v1beta/models", timeout=10).json()["models"]
    assert f"models/{MODEL}" in [m["name"] for m in models]
    vertex = httpx.get(sim.url + VERTEX.rsplit("/", 1)[0], timeout=10).json()["publisherModels"]
    assert vertex and vertex[0]["name"].startswith("publishers/google/models/")
    one = httpx.get(sim.url + GEMINI, timeout=10).json()
    assert one["name"] == f"models/{MODEL}"
    assert sim.stats()["other"] == 2


def assert_google_error(response: httpx.Response, code: int, status: str) -> dict[str, Any]:
    assert response.status_code == code
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["status"] == status and error["message"]
    return error


def test_unknown_path_and_wrong_method(sim: Simulator) -> None:
    assert_google_error(httpx.get(sim.url + "/nowhere", timeout=10), 404, "NOT_FOUND")
    assert_google_error(
        httpx.get(sim.url + GEMINI + ":generateContent", timeout=10), 405, "METHOD_NOT_ALLOWED"
    )
    assert_google_error(httpx.post(sim.url + "/v1beta/models", timeout=10), 405, "METHOD_NOT_ALLOWED")
    assert_google_error(post(sim, GEMINI + ":frobnicate"), 404, "NOT_FOUND")
    assert_google_error(httpx.delete(sim.url + "/_simulator/stats", timeout=10), 405, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'"text"', b"{}", b'{"contents": []}', b""])
def test_bad_input_is_400(sim: Simulator, content: bytes) -> None:
    assert_google_error(post(sim, GEMINI + ":generateContent", content=content), 400, "INVALID_ARGUMENT")
    assert_google_error(post(sim, VERTEX + ":countTokens", content=content), 400, "INVALID_ARGUMENT")
    wrapped = post(sim, VERTEX + ":streamGenerateContent", content=content)
    assert wrapped.status_code == 400 and wrapped.json()[0]["error"]["status"] == "INVALID_ARGUMENT"
    assert sim.stats()["served"] == 0


def test_gemini_429_has_retry_info_that_is_accurate(sim: Simulator) -> None:
    sim.configure(rpm=2, window_s=1.5)
    for _ in range(2):
        assert post(sim, GEMINI + ":generateContent").status_code == 200
    refused = post(sim, GEMINI + ":generateContent")
    error = assert_google_error(refused, 429, "RESOURCE_EXHAUSTED")
    assert "retry-after" not in refused.headers
    types = [d["@type"] for d in error["details"]]
    assert types == [
        "type.googleapis.com/google.rpc.QuotaFailure",
        "type.googleapis.com/google.rpc.Help",
        "type.googleapis.com/google.rpc.RetryInfo",
    ]
    violation = error["details"][0]["violations"][0]
    assert violation["quotaValue"] == "2" and violation["quotaDimensions"]["model"] == MODEL
    delay = parse_retry_delay(refused.content)
    assert delay is not None and 0 < delay <= 1.5
    assert error["message"].endswith(f"Please retry in {error['details'][2]['retryDelay'][:-1]}s.")
    time.sleep(delay)
    assert post(sim, GEMINI + ":generateContent").status_code == 200
    stats = sim.stats()
    assert stats["served"] == 3 and stats["rejected"] == 1 and stats["max_in_window"] == 2


def test_gemini_tpm_429_names_the_token_metric(sim: Simulator) -> None:
    sim.configure(tpm=10, window_s=1.0)
    eight = request("x" * 32)  # 8 tokens
    assert post(sim, GEMINI + ":generateContent", eight).status_code == 200
    refused = post(sim, GEMINI + ":generateContent", eight)
    error = assert_google_error(refused, 429, "RESOURCE_EXHAUSTED")
    assert "input_token_count" in error["details"][0]["violations"][0]["quotaMetric"]
    delay = parse_retry_delay(refused.content)
    assert delay is not None
    time.sleep(delay)
    assert post(sim, GEMINI + ":generateContent", eight).status_code == 200
    assert sim.stats()["max_tokens_in_window"] == 8


@pytest.mark.parametrize("base", [VERTEX, EXPRESS])
def test_vertex_429_is_dynamic_shared_quota(sim: Simulator, base: str) -> None:
    sim.configure(rpm=1)
    assert post(sim, base + ":generateContent").status_code == 200
    refused = post(sim, base + ":generateContent")
    assert refused.json() == {"error": {"code": 429, "message": VERTEX_429, "status": "RESOURCE_EXHAUSTED"}}
    assert "retry-after" not in refused.headers
    array = post(sim, base + ":streamGenerateContent")
    assert array.status_code == 429 and array.json() == [refused.json()]
    sse = post(sim, base + ":streamGenerateContent?alt=sse")
    assert sse.status_code == 429 and sse.json() == refused.json()


def test_stats_reset_and_config(sim: Simulator) -> None:
    post(sim, GEMINI + ":generateContent", request("abcdefgh"))  # 2 tokens
    post(sim, VERTEX.replace(MODEL, "gemini-2.5-pro") + ":streamGenerateContent?alt=sse")
    post(sim, GEMINI + ":countTokens")
    stats = sim.stats()
    assert stats["served"] == 2 and stats["rejected"] == 0 and stats["count_tokens"] == 1
    assert stats["prompt_tokens"] == 4 and stats["by_model"] == {MODEL: 1, "gemini-2.5-pro": 1}
    assert stats["max_in_window"] == 2 and stats["max_tokens_in_window"] == 4
    sim.reset()
    stats = sim.stats()
    assert (
        stats["served"] == stats["prompt_tokens"] == stats["max_in_window"] == 0 and stats["by_model"] == {}
    )
    config = sim.configure(rpm=5, tpm=100, window_s=2, latency_ms=1)
    assert (config["rpm"], config["tpm"], config["window_s"], config["latency_ms"]) == (5, 100, 2.0, 1.0)
    bad = httpx.post(sim.url + "/_simulator/config", json={"rpm": -1}, timeout=10)
    assert_google_error(bad, 400, "INVALID_ARGUMENT")
    assert_google_error(
        httpx.post(sim.url + "/_simulator/config", json={"x": 1}, timeout=10), 400, "INVALID_ARGUMENT"
    )
    assert sim.configure()["rpm"] == 5


def test_latency_delays_the_answer(sim: Simulator) -> None:
    sim.configure(latency_ms=300)
    started = time.monotonic()
    assert post(sim, GEMINI + ":generateContent").status_code == 200
    assert time.monotonic() - started >= 0.3  # a sleep never ends early: no flaky upper bound


def test_fault_error500_for_the_next_n_calls(sim: Simulator) -> None:
    sim.configure(fault="error500", count=2)
    assert_google_error(post(sim, GEMINI + ":generateContent"), 500, "INTERNAL")
    wrapped = post(sim, VERTEX + ":streamGenerateContent")
    assert wrapped.status_code == 500 and wrapped.json()[0]["error"]["status"] == "INTERNAL"
    assert post(sim, GEMINI + ":generateContent").status_code == 200
    stats = sim.stats()
    assert stats["faults"] == 2 and stats["served"] == 1


def test_fault_reset_closes_without_answer(sim: Simulator) -> None:
    sim.configure(fault="reset")
    with pytest.raises(httpx.TransportError):
        post(sim, GEMINI + ":generateContent")
    assert post(sim, GEMINI + ":generateContent").status_code == 200


def test_fault_cut_stream(sim: Simulator) -> None:
    sim.configure(fault="cut_stream", count=2)
    received: list[str] = []
    with (
        pytest.raises(httpx.TransportError),
        httpx.stream(
            "POST",
            sim.url + GEMINI + ":streamGenerateContent?alt=sse",
            content=orjson.dumps(request()),
            timeout=30,
        ) as response,
    ):
        assert response.status_code == 200
        received.extend(line for line in response.iter_lines() if line.startswith("data: "))
    assert 1 <= len(received) < 4
    assert "finishReason" not in received[-1]
    with pytest.raises(httpx.TransportError):
        post(sim, GEMINI + ":generateContent")  # a plain answer cut halfway
    assert post(sim, GEMINI + ":generateContent").status_code == 200


def test_fault_invalid_json(sim: Simulator) -> None:
    sim.configure(fault="invalid_json", count=2)
    plain = post(sim, GEMINI + ":generateContent")
    assert plain.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(plain.content)
    sse = post(sim, GEMINI + ":streamGenerateContent?alt=sse")
    assert sse.content.startswith(b"data: ")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(sse.content[6:])


def test_fault_hang_until_client_gives_up(sim: Simulator) -> None:
    sim.configure(fault="hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(sim.url + GEMINI + ":generateContent", content=orjson.dumps(request()), timeout=0.5)
    assert post(sim, GEMINI + ":generateContent").status_code == 200


def test_command_line_options_reach_the_config(tmp_path: Path) -> None:
    args = ("--rpm", "7", "--tpm", "70", "--window-s", "3", "--latency-ms", "2", "--chunk-delay-ms", "1")
    with simulator_process(*args, "--chunks", "2") as sim:
        config = sim.stats()["config"]
        assert (config["rpm"], config["tpm"], config["window_s"]) == (7, 70, 3.0)
        assert (config["latency_ms"], config["chunk_delay_ms"], config["chunks"]) == (2.0, 1.0, 2)
        array = orjson.loads(post(sim, GEMINI + ":streamGenerateContent").content)
        assert len(array) == 2


# ---------------------------------------------------------------- the google-genai SDK, unchanged


def sdk_client(sim: Simulator, **kwargs: Any) -> Any:
    from google import genai
    from google.genai import types

    return genai.Client(api_key="x", http_options=types.HttpOptions(base_url=sim.url), **kwargs)


@pytest.mark.parametrize("vertexai", [False, True], ids=["gemini-api", "vertex-express"])
def test_genai_sdk_against_the_simulator(sim: Simulator, vertexai: bool) -> None:
    client = sdk_client(sim, vertexai=vertexai)
    whole = client.models.generate_content(model=MODEL, contents="Say hi")
    assert whole.text.startswith("Simulated answer")
    assert whole.usage_metadata.prompt_token_count == 2
    streamed = list(client.models.generate_content_stream(model=MODEL, contents="Say hi"))
    assert len(streamed) == 4 and "".join(c.text for c in streamed) == whole.text
    assert streamed[-1].usage_metadata.total_token_count == whole.usage_metadata.total_token_count
    assert client.models.count_tokens(model=MODEL, contents="abcdefghi").total_tokens == 3
    assert sim.stats()["served"] == 2


@pytest.mark.parametrize("vertexai", [False, True], ids=["gemini-api", "vertex-express"])
def test_genai_sdk_sees_429_as_client_error(sim: Simulator, vertexai: bool) -> None:
    from google.genai import errors

    sim.configure(rpm=1)
    client = sdk_client(sim, vertexai=vertexai)
    client.models.generate_content(model=MODEL, contents="Say hi")
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=MODEL, contents="Say hi")
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"
    assert sim.stats()["rejected"] == 1


# ---------------------------------------------------------------- mounted in-process, and the CLI


async def call_app(
    app: Any, method: str, path: str, body: bytes = b"", query: bytes = b""
) -> list[dict[str, Any]]:
    """Drive the ASGI app the way a server would, with no lifespan events."""
    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return requests.pop() if requests else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": query, "headers": []}
    await app(scope, receive, send)
    return sent


def test_mounted_in_process_without_lifespan() -> None:
    import asyncio

    from knowctl.simulator import SimulatorApp, SimulatorConfig

    app = SimulatorApp(SimulatorConfig(rpm=1))
    body = orjson.dumps(request())
    sent = asyncio.run(call_app(app, "POST", GEMINI + ":streamGenerateContent", body, b"alt=sse"))
    assert sent[0]["status"] == 200 and len(sent) == 5
    assert [m["more_body"] for m in sent[1:]] == [True, True, True, False]
    assert asyncio.run(call_app(app, "POST", GEMINI + ":generateContent", body))[0]["status"] == 429
    app.reset()
    app.configure({"fault": "reset"})
    # Without a server transport to abort, a dropped connection is an exception for the caller.
    with pytest.raises(ConnectionResetError):
        asyncio.run(call_app(app, "POST", GEMINI + ":generateContent", body))
    assert app.stats_json()["faults"] == 1


def test_knowctl_simulate_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.net import free_port, knowctl_process

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with knowctl_process(["simulate", "--port", str(port), "--rpm", "3"], f"{url}/_simulator/stats"):
        assert httpx.get(f"{url}/_simulator/stats", timeout=10).json()["config"]["rpm"] == 3
        assert httpx.post(url + GEMINI + ":generateContent", json=request(), timeout=10).status_code == 200
    # The command module keeps uvicorn out of `knowctl --help`.
    probe = "import sys, knowctl.commands.simulate; print('uvicorn' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- models: Google's list, Google's 404

UNKNOWN = "gemini-9-ultra"


def not_found_message(model: str, method: str, version: str = "v1beta") -> str:
    return (
        f"models/{model} is not found for API version {version}, or is not supported for {method}. "
        "Call ListModels to see the list of available models and their supported methods."
    )


@pytest.fixture(scope="module")
def google_like() -> Iterator[Simulator]:
    """A simulator as `knowctl simulate` runs by default: only the models it lists."""
    with simulator_process(any_model=False) as sim:
        yield sim


def test_an_unknown_model_is_googles_404(google_like: Simulator) -> None:
    sim = google_like
    unknown = GEMINI.replace(MODEL, UNKNOWN)
    answer = post(sim, unknown + ":generateContent")
    assert answer.status_code == 404
    assert answer.json() == {
        "error": {
            "code": 404,
            "message": not_found_message(UNKNOWN, "generateContent"),
            "status": "NOT_FOUND",
        }
    }
    v1 = post(sim, GEMINI_V1.replace(MODEL, UNKNOWN) + ":countTokens")
    assert v1.json()["error"]["message"] == not_found_message(UNKNOWN, "countTokens", "v1")
    sse = post(sim, unknown + ":streamGenerateContent?alt=sse")
    assert sse.status_code == 404 and sse.json()["error"]["status"] == "NOT_FOUND"
    array = post(sim, unknown + ":streamGenerateContent")  # a JSON-array stream's error is in [ ]
    assert array.status_code == 404 and array.json()[0]["error"]["status"] == "NOT_FOUND"
    one = httpx.get(sim.url + unknown, timeout=10)
    assert one.status_code == 404 and one.json()["error"]["message"] == not_found_message(UNKNOWN, "get")
    vertex = post(sim, VERTEX.replace(MODEL, UNKNOWN) + ":generateContent").json()["error"]
    assert (vertex["code"], vertex["status"]) == (404, "NOT_FOUND")
    assert vertex["message"].startswith(
        f"Publisher Model `projects/p1/locations/us-central1/publishers/google/models/{UNKNOWN}` "
        "was not found or your project does not have access to it."
    )
    # An embedding model does not generate, and a generating model does not embed.
    embed = {"content": {"parts": [{"text": "hi"}]}}
    assert post(sim, "/v1beta/models/gemini-embedding-001:embedContent", embed).status_code == 200
    wrong = post(sim, "/v1beta/models/gemini-embedding-001:generateContent")
    assert wrong.json()["error"]["message"] == not_found_message("gemini-embedding-001", "generateContent")
    assert post(sim, GEMINI + ":embedContent", embed).status_code == 404
    assert post(sim, GEMINI + ":generateContent").status_code == 200
    assert sim.stats()["not_found"] == 8 and sim.stats()["served"] == 1


def test_the_listing_is_what_is_served_and_configurable(google_like: Simulator) -> None:
    from knowctl.simulator.app import MODELS

    sim = google_like

    def listed() -> list[str]:
        return [m["name"] for m in httpx.get(sim.url + "/v1beta/models", timeout=10).json()["models"]]

    assert listed() == [f"models/{m}" for m in MODELS]
    assert {"gemini-2.5-flash", "gemini-2.5-pro", "gemini-3.5-flash"} <= set(MODELS)
    try:
        assert sim.configure(models=["models/my-tuned-1", "gemini-2.5-pro"])["models"] == [
            "my-tuned-1",
            "gemini-2.5-pro",
        ]
        assert listed() == ["models/my-tuned-1", "models/gemini-2.5-pro"]
        assert post(sim, "/v1beta/models/my-tuned-1:generateContent").status_code == 200
        assert post(sim, GEMINI + ":generateContent").status_code == 404  # no longer listed
        sim.configure(any_model=True)
        assert post(sim, "/v1beta/models/fuzz-anything:generateContent").status_code == 200
        for bad in ({"models": []}, {"models": ["a b"]}, {"models": 5}, {"any_model": "yes"}):
            refused = httpx.post(sim.url + "/_simulator/config", json=bad, timeout=10)
            assert_google_error(refused, 400, "INVALID_ARGUMENT")
    finally:
        sim.configure(models=list(MODELS), any_model=False)


def test_models_on_the_command_line(tmp_path: Path) -> None:
    with simulator_process("--models", "gemini-2.5-flash,my-model", any_model=False) as sim:
        names = [m["name"] for m in httpx.get(sim.url + "/v1beta/models", timeout=10).json()["models"]]
        assert names == ["models/gemini-2.5-flash", "models/my-model"]
        assert post(sim, "/v1beta/models/my-model:generateContent").status_code == 200
        assert post(sim, "/v1beta/models/gemini-2.5-pro:generateContent").status_code == 404
    with simulator_process("--any-model", any_model=False) as sim:
        assert post(sim, "/v1beta/models/model-1234abcd:generateContent").status_code == 200
    import subprocess
    import sys

    bad = subprocess.run(
        [sys.executable, "-m", "knowctl", "simulate", "--models", "a b"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert bad.returncode == 2 and "not a model name" in bad.stderr


def test_serve_simulate_answers_unknown_models_as_google_does(tmp_path: Path) -> None:
    """Through the gateway and the official SDK: the 404 arrives as Google's ClientError."""
    from google import genai
    from google.genai import errors, types

    from knowctl.simulator.app import MODELS
    from tests.support.fixtures import start_gateway

    handle, process = start_gateway(tmp_path, "--simulate")
    with process:
        client = genai.Client(api_key="x", http_options=types.HttpOptions(base_url=handle.url))
        with pytest.raises(errors.ClientError) as caught:
            client.models.generate_content(model=UNKNOWN, contents="Say hi")
        assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"
        assert caught.value.message == not_found_message(UNKNOWN, "generateContent", "v1")
        assert [m.name for m in client.models.list()] == [f"models/{m}" for m in MODELS]
        assert client.models.generate_content(model=MODEL, contents="Say hi").text
        # The daemon serves on, and its simulator's list is configurable there too.
        changed = httpx.post(handle.url + "/_simulator/config", json={"models": [UNKNOWN]}, timeout=10)
        assert changed.status_code == 200
        assert client.models.generate_content(model=UNKNOWN, contents="Say hi").text
