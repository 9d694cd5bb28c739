"""Upstream misbehaviour through a real gateway and the simulator's faults: timeouts, 500s,
connection resets, streams cut midway, invalid JSON.

Each time the caller gets a clear error (Google's error shape, or a cut connection once a
stream had begun) or a STALE answer, and nothing broken is cached: asking again goes
upstream again (``X-Knowctl-Cache: MISS``). And the stale fallback end to end: once the
provider's quota ran out, a repeated request is answered STALE without reaching it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.fixtures import Gateway, Simulator, start_gateway

MODEL = "gemini-2.5-flash"
FRAMINGS = {
    "json": f"/v1beta/models/{MODEL}:generateContent",
    "sse": f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
    "array": f"/v1beta/models/{MODEL}:streamGenerateContent",
}
FAULTS = ("error500", "reset", "cut_stream", "invalid_json", "hang")


@pytest.fixture(scope="module")
def faulty(simulator_process: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with a short upstream timeout and answers that turn stale after half a second."""
    handle, process = start_gateway(
        tmp_path_factory.mktemp("faults"),
        "--upstream",
        simulator_process.url,
        env={
            "KNOWCTL_USER_LIMITS": "none",
            "KNOWCTL_UPSTREAM_TIMEOUT": "1",
            "KNOWCTL_CACHE_L1_TTL": "0.5",
            "KNOWCTL_CACHE_L2_TTL": "0.5",
            "KNOWCTL_CACHE_STALE_TTL": "600",
            "KNOWCTL_UPSTREAM_BACKOFF_S": "30",
        },
    )
    with process:
        yield handle


def body(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def post(gateway: Gateway, path: str, text: str) -> httpx.Response | Exception:
    # A pass-through caller brings its own credential: a call without one is never cached.
    headers = {"x-goog-api-key": "caller-key"}
    try:
        return httpx.post(gateway.url + path, json=body(text), headers=headers, timeout=10)
    except httpx.TransportError as exc:  # a stream cut after its headers were sent
        return exc


def is_google_error(response: httpx.Response) -> bool:
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return isinstance(error, dict) and {"code", "message", "status"} <= set(error)


def complete_answer(response: httpx.Response, framing: str) -> bool:
    """The answer parses as a whole and ends with a finished candidate."""
    try:
        if framing == "sse":
            frames = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
            chunks = [orjson.loads(f) for f in frames]
        elif framing == "array":
            chunks = orjson.loads(response.content)
        else:
            chunks = [orjson.loads(response.content)]
    except orjson.JSONDecodeError:
        return False
    return bool(chunks) and chunks[-1]["candidates"][0].get("finishReason") == "STOP"


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_is_a_clear_error_and_nothing_broken_is_cached(
    faulty: Gateway, simulator: Simulator, fault: str, framing: str
) -> None:
    path = FRAMINGS[framing]
    text = f"{fault}-{framing}-{uuid.uuid4().hex}"
    simulator.configure(fault=fault, count=1)
    got = post(faulty, path, text)
    if isinstance(got, httpx.Response):
        if got.status_code == 200:
            # Only possible once the headers went out before the fault showed: the answer
            # is visibly broken, never a complete answer.
            assert fault in ("cut_stream", "invalid_json"), got.text
            assert not complete_answer(got, framing), got.text
        else:
            assert got.status_code in (500, 502, 504), got.text
            assert is_google_error(got), got.text
            assert got.headers.get("x-knowctl-cache") != "STALE"
    else:
        assert fault == "cut_stream" and framing != "json", got
    served = simulator.stats()["served"]
    again = post(faulty, path, text)
    assert isinstance(again, httpx.Response) and again.status_code == 200
    assert again.headers["x-knowctl-cache"] == "MISS", "a broken answer was cached"
    assert complete_answer(again, framing)
    assert simulator.stats()["served"] == served + 1


def test_invalid_json_from_upstream_is_a_502(faulty: Gateway, simulator: Simulator) -> None:
    simulator.configure(fault="invalid_json", count=1)
    got = post(faulty, FRAMINGS["json"], uuid.uuid4().hex)
    assert isinstance(got, httpx.Response)
    assert got.status_code == 502 and is_google_error(got)


@pytest.mark.parametrize(
    "fault",
    [
        "error500",
        "reset",
        "hang",
    ],
)
def test_a_fault_with_a_stale_copy_is_answered_stale(
    faulty: Gateway, simulator: Simulator, fault: str
) -> None:
    path, text = FRAMINGS["json"], f"stale-{fault}-{uuid.uuid4().hex}"
    fresh = post(faulty, path, text)
    assert isinstance(fresh, httpx.Response) and fresh.headers["x-knowctl-cache"] == "MISS"
    time.sleep(0.6)  # past the fresh TTL: only the stale copy is left
    simulator.configure(fault=fault, count=1)
    got = post(faulty, path, text)
    assert isinstance(got, httpx.Response) and got.status_code == 200
    assert got.headers["x-knowctl-cache"] == "STALE" and int(got.headers["age"]) >= 0
    assert got.json() == fresh.json()


def test_provider_quota_gone_answers_stale_without_reaching_upstream(
    faulty: Gateway, simulator: Simulator
) -> None:
    simulator.configure(rpm=1, window_s=60)
    path, text = FRAMINGS["json"], f"quota-{uuid.uuid4().hex}"
    fresh = post(faulty, path, text)
    assert isinstance(fresh, httpx.Response) and fresh.status_code == 200
    time.sleep(0.6)
    # The provider says 429: the stale copy answers, and the model is held.
    first = post(faulty, path, text)
    assert isinstance(first, httpx.Response) and first.headers["x-knowctl-cache"] == "STALE"
    reached = simulator.stats()
    assert reached["rejected"] == 1
    second = post(faulty, path, text)
    assert isinstance(second, httpx.Response) and second.status_code == 200
    assert second.headers["x-knowctl-cache"] == "STALE" and "age" in second.headers
    after = simulator.stats()
    assert (after["served"], after["rejected"]) == (reached["served"], reached["rejected"])
    # A prompt without a stale copy gets a clear 429 while the model is held.
    other = post(faulty, path, f"none-{uuid.uuid4().hex}")
    assert isinstance(other, httpx.Response) and other.status_code == 429 and is_google_error(other)
    simulator.configure(rpm=0)


def upstream_counts(gateway: Gateway, model: str) -> dict[str, float]:
    """knowctl_upstream_requests_total of ``model``, by outcome."""
    text = httpx.get(gateway.url + "/api/metrics", timeout=10).text
    prefix = f'knowctl_upstream_requests_total{{model="{model}",outcome="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def test_upstream_outcomes_are_counted_and_failures_logged(faulty: Gateway, simulator: Simulator) -> None:
    """Outcomes are counted by model; a name the provider has not yet answered for is
    counted as ``other`` (made-up names never make series of their own), its own once it
    has been answered."""
    model = f"counted-{uuid.uuid4().hex[:8]}"  # no hold left by the tests above on it

    def status() -> int:
        got = post(faulty, f"/v1beta/models/{model}:generateContent", uuid.uuid4().hex)
        assert isinstance(got, httpx.Response)
        return got.status_code

    before, before_other = upstream_counts(faulty, model), upstream_counts(faulty, "other")
    assert before == {}  # a fresh model
    simulator.configure(fault="hang", count=1)
    assert status() == 504
    simulator.configure(fault="reset", count=1)
    assert status() == 502
    assert status() == 200
    simulator.configure(fault="hang", count=1)
    assert status() == 504
    after, after_other = upstream_counts(faulty, model), upstream_counts(faulty, "other")

    def added(outcome: str, was: dict[str, float], now: dict[str, float]) -> float:
        return now.get(outcome, 0) - was.get(outcome, 0)

    assert (added("timeout", before_other, after_other), added("broken", before_other, after_other)) == (1, 1)
    assert (added("200", before, after), added("timeout", before, after)) == (1, 1)
    assert f"upstream call for {model} failed: upstream did not answer in time" in faulty.log_text()


@pytest.mark.parametrize("framing", ["sse", "array"])
def test_a_stream_that_breaks_before_its_first_event_is_a_clean_502(tmp_path: Path, framing: str) -> None:
    """The head of a streamed answer leaves with its first event: an upstream that answers
    200 and then drops the connection before any event gets a Google-shaped 502, not a 200
    that ends in nothing."""
    with head_then_hang_up() as upstream_url:
        handle, process = start_gateway(
            tmp_path,
            "--upstream",
            upstream_url,
            "--store",
            "memory://",
            env={"KNOWCTL_AUTH_MODE": "anonymous"},
        )
        with process:
            got = post(handle, FRAMINGS[framing], uuid.uuid4().hex)
    assert isinstance(got, httpx.Response), got
    assert got.status_code == 502 and is_google_error(got), got.text


@contextlib.contextmanager
def head_then_hang_up() -> Iterator[str]:
    """A loopback upstream that reads a request, sends a streaming 200 head, and closes."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _, rest = request.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
