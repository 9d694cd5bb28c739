"""The daemon over real HTTP: forwarding, streaming, bad input, upstream failures, ops routes."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.fixtures import Gateway, Simulator, start_gateway
from tests.support.net import LOOPBACK, free_port
from tests.support.recorder import recording_upstream

GEN = "/v1beta/models/gemini-2.5-flash:generateContent"
STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
VERTEX = "/v1/projects/demo/locations/us-central1/publishers/google/models/gemini-2.5-flash"


def body(text: str) -> dict[str, object]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def assert_google_error(response: httpx.Response, code: int, status: str | None = None) -> str:
    assert response.status_code == code, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    if status:
        assert error["status"] == status
    return str(error["message"])


def test_generate_answer_is_the_upstream_answer_unchanged(gateway: Gateway, simulator: Simulator) -> None:
    for path in (
        GEN,
        f"{VERTEX}:generateContent",
        "/v1beta1/publishers/google/models/gemini-2.5-flash:generateContent",
    ):
        direct = httpx.post(simulator.url + path, json=body("why is the sky blue"))
        through = httpx.post(gateway.url + path, json=body("why is the sky blue"))
        assert through.status_code == direct.status_code == 200
        assert through.content == direct.content
        assert through.json()["usageMetadata"]["totalTokenCount"] > 0


@pytest.mark.parametrize("query", ["?alt=sse", ""])
def test_stream_framings_pass_through_unchanged(gateway: Gateway, simulator: Simulator, query: str) -> None:
    direct = httpx.post(f"{simulator.url}{STREAM}{query}", json=body("tell me about tides"))
    through = httpx.post(f"{gateway.url}{STREAM}{query}", json=body("tell me about tides"))
    assert through.status_code == 200
    assert through.content == direct.content
    assert through.headers["content-type"].split(";")[0] == direct.headers["content-type"].split(";")[0]
    if query:
        frames = [f for f in through.text.split("\r\n\r\n") if f]
        assert len(frames) > 1 and all(f.startswith("data: ") for f in frames)
        assert "usageMetadata" in orjson.loads(frames[-1][6:])
    else:
        chunks = orjson.loads(through.content)
        assert len(chunks) > 1 and chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_stream_arrives_as_it_is_made_not_buffered(gateway: Gateway, simulator: Simulator) -> None:
    simulator.configure(chunk_delay_ms=300)
    arrivals: list[float] = []
    with httpx.stream("POST", f"{gateway.url}{STREAM}?alt=sse", json=body("a slow stream")) as response:
        assert response.status_code == 200
        for _chunk in response.iter_raw():
            arrivals.append(time.monotonic())
    # The simulator waits 300 ms between chunks: a buffering proxy would deliver them at once.
    assert len(arrivals) >= 3
    assert arrivals[-1] - arrivals[0] >= 0.5


def test_count_tokens_listing_and_other_actions(gateway: Gateway, simulator: Simulator) -> None:
    counted = httpx.post(gateway.url + "/v1beta/models/gemini-2.5-flash:countTokens", json=body("count me"))
    assert counted.status_code == 200 and counted.json()["totalTokens"] > 0
    listing = httpx.get(gateway.url + "/v1beta/models")
    assert listing.status_code == 200 and listing.json() == httpx.get(simulator.url + "/v1beta/models").json()
    embed = httpx.post(
        gateway.url + "/v1beta/models/text-embedding-004:embedContent",
        json={"content": {"parts": [{"text": "x"}]}},
    )
    assert embed.status_code == 200 and embed.json()["embedding"]["values"]


def test_path_query_and_headers_forwarded_caller_credentials_pass_through(tmp_path: Path) -> None:
    with recording_upstream() as upstream:
        handle, process = start_gateway(tmp_path, "--upstream", upstream.url + "/base")
        with process:
            response = httpx.post(
                f"{handle.url}{VERTEX}%3AgenerateContent?%24alt=json%3Benum-encoding%3Dint",
                json=body("hi"),
                headers={
                    "authorization": "Bearer caller-token",
                    "x-goog-user-project": "billing-proj",
                    "x-vertex-ai-llm-request-type": "shared",
                    "x-knowctl-priority": "high",
                },
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-goog-trace"] == "kept"
    seen = upstream.requests[-1]
    assert seen.path == f"/base{VERTEX}%3AgenerateContent?%24alt=json%3Benum-encoding%3Dint"
    assert seen.headers["authorization"] == "Bearer caller-token"
    assert seen.headers["x-goog-user-project"] == "billing-proj"
    assert seen.headers["x-vertex-ai-llm-request-type"] == "shared"
    assert "x-knowctl-priority" not in seen.headers
    assert orjson.loads(seen.body) == body("hi")


def test_own_api_key_replaces_the_callers(tmp_path: Path) -> None:
    secret = tmp_path / "key.txt"
    secret.write_text("server-side-key\n")
    with recording_upstream() as upstream:
        handle, process = start_gateway(
            tmp_path, "--upstream", upstream.url, env={"KNOWCTL_GOOGLE_API_KEY_FILE": str(secret)}
        )
        with process:
            # Holding its own key, the gateway admits only its own gateway keys (keys mode).
            assert httpx.post(f"{handle.url}{GEN}?key=caller-key", json=body("hi")).status_code == 401
            created = httpx.post(handle.url + "/api/keys", json={"user": "alice"})
            assert created.status_code == 201, created.text
            gateway_key = created.json()["key"]
            response = httpx.post(f"{handle.url}{GEN}?key={gateway_key}&x=1", json=body("hi"))
            assert response.status_code == 200
            log = handle.log_text()
    seen = upstream.requests[-1]
    assert seen.headers["x-goog-api-key"] == "server-side-key"
    assert seen.path == f"{GEN}?x=1"
    assert "server-side-key" not in log and gateway_key not in log
    assert len(upstream.requests) == 1  # the refused call was never forwarded


def test_bad_input_gets_google_errors(gateway: Gateway) -> None:
    assert_google_error(httpx.get(gateway.url + "/nothing/here"), 404, "NOT_FOUND")
    assert_google_error(httpx.post(gateway.url + "/v1beta/models/m:generate-content", json={}), 404)
    assert_google_error(httpx.get(gateway.url + GEN), 405)
    message = assert_google_error(
        httpx.post(
            gateway.url + GEN, content=b'{"contents": [', headers={"content-type": "application/json"}
        ),
        400,
        "INVALID_ARGUMENT",
    )
    assert "Invalid JSON" in message
    assert "contents" in assert_google_error(
        httpx.post(gateway.url + GEN, json={"generationConfig": {}}), 400
    )
    assert_google_error(httpx.post(gateway.url + GEN, json=[1, 2]), 400)
    assert_google_error(httpx.post(gateway.url + GEN, content=b"\xff\xfe\x00"), 400)
    huge = b'{"contents": [{"parts": [{"text": "' + b"x" * (11 * 1024 * 1024) + b'"}]}]}'
    assert_google_error(httpx.post(gateway.url + GEN, content=huge, timeout=30), 413)
    # The daemon is still well after all of that.
    assert httpx.get(gateway.url + "/api/health").status_code == 200


def test_upstream_errors_pass_through(gateway: Gateway, simulator: Simulator) -> None:
    # A model of this test alone: the provider's 429 puts a hold on the model it names.
    path = f"/v1beta/models/errors-{uuid.uuid4().hex[:8]}:generateContent"
    simulator.configure(fault="error500", count=1)
    failed = httpx.post(gateway.url + path, json=body("x"))
    assert failed.status_code == 500 and failed.json()["error"]["code"] == 500
    simulator.configure(rpm=1, window_s=60)
    assert httpx.post(gateway.url + path, json=body("first")).status_code == 200
    limited = httpx.post(gateway.url + path, json=body("second"))
    assert_google_error(limited, 429, "RESOURCE_EXHAUSTED")
    assert any("RetryInfo" in d["@type"] for d in limited.json()["error"]["details"])
    # The provider's delay is passed on as a Retry-After header too.
    assert int(limited.headers["retry-after"]) >= 1


def test_unreachable_upstream_is_a_clear_503(tmp_path: Path) -> None:
    handle, process = start_gateway(tmp_path, "--upstream", f"http://{LOOPBACK}:{free_port()}")
    with process:
        started = time.monotonic()
        message = assert_google_error(httpx.post(handle.url + GEN, json=body("x")), 503, "UNAVAILABLE")
        assert "unreachable" in message and time.monotonic() - started < 5


def test_slow_upstream_is_a_clear_504(tmp_path: Path, simulator: Simulator) -> None:
    handle, process = start_gateway(
        tmp_path, "--upstream", simulator.url, env={"KNOWCTL_UPSTREAM_TIMEOUT": "1"}
    )
    with process:
        simulator.configure(fault="hang", count=1)
        assert_google_error(
            httpx.post(handle.url + GEN, json=body("x"), timeout=10), 504, "DEADLINE_EXCEEDED"
        )
        assert httpx.post(handle.url + GEN, json=body("y")).status_code == 200


def test_ready_reports_dependencies(gateway: Gateway) -> None:
    ready = httpx.get(gateway.url + "/api/ready")
    assert ready.status_code == 200
    data = ready.json()
    assert data["status"] == "ready" and data["degraded"] is False
    assert data["dependencies"]["store"]["backend"] == "memory"
    assert data["dependencies"]["upstream"]["credentials"] == "passthrough"
    assert httpx.get(gateway.url + "/api/health").json() == {"status": "ok"}


def test_store_outage_is_degraded_not_unready(tmp_path: Path, simulator: Simulator) -> None:
    # Per-user limits off: while the store is down a user's local share starts full (for the
    # default 500/day, a day), which tests/gateway/test_outage.py covers.
    handle, process = start_gateway(
        tmp_path,
        "--upstream",
        simulator.url,
        "--store",
        f"redis://{LOOPBACK}:{free_port()}/0",
        env={"KNOWCTL_USER_LIMITS": "none"},
    )
    with process:
        ready = httpx.get(handle.url + "/api/ready")
        assert ready.status_code == 200
        assert ready.json()["degraded"] is True
        assert ready.json()["dependencies"]["store"]["ok"] is False
        assert httpx.post(handle.url + GEN, json=body("still serving")).status_code == 200


def test_metrics_count_requests(gateway: Gateway, simulator: Simulator) -> None:
    httpx.post(gateway.url + GEN, json=body("metrics"))
    text = httpx.get(gateway.url + "/api/metrics").text
    assert 'knowctl_http_requests_total{route="generateContent",status="200"}' in text
    assert "knowctl_upstream_duration_seconds_bucket" in text


def test_simulate_mode_runs_alone(tmp_path: Path) -> None:
    handle, process = start_gateway(tmp_path, "--simulate")
    with process:
        answer = httpx.post(handle.url + GEN, json=body("hello"))
        assert answer.status_code == 200 and answer.json()["candidates"][0]["content"]["parts"][0]["text"]
        stats = httpx.get(handle.url + "/_simulator/stats").json()
        assert stats["served"] == 1
        assert "SIMULATOR" in handle.log_text()


def test_access_log_line_per_request(gateway: Gateway, simulator: Simulator) -> None:
    marker = uuid.uuid4().hex
    response = httpx.post(gateway.url + GEN, json=body(f"logged {marker}"), headers={"x-request-id": marker})
    assert response.status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [orjson.loads(line) for line in gateway.log_text().splitlines() if marker in line]
        if lines:
            break
        time.sleep(0.05)
    entry = lines[0]
    assert entry["logger"] == "knowctl.access" and entry["request_id"] == marker
    assert entry["route"] == "generateContent" and entry["status"] == 200
    assert entry["cache"] == "MISS" and entry["user"] and entry["latency_ms"] > 0
