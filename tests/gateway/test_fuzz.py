"""Bad input and abuse over real HTTP: hypothesis-made malformed Gemini requests, odd paths and
methods, bad headers, topic names, invalidation patterns and admin bodies, plus slow clients.

Against one gateway on a real Redis: never a 5xx, never a crash, every refusal a clear 4xx in
Google's error shape, memory bounded, and pattern / topic input reaches Redis only as data
(a canary key and every non-cache key are untouched however hostile the input).

CI runs a few hundred examples per surface; ``KNOWCTL_FUZZ_EXAMPLES`` raises that for a long run.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fixtures import Gateway, Simulator, start_gateway
from tests.support.net import LOOPBACK

EXAMPLES = int(os.environ.get("KNOWCTL_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAX_BODY = 64 * 1024
# A model of this module alone: provider 429s in other tests put holds on the models they
# name, in the session's shared Redis.
MODEL = f"fuzz-{uuid.uuid4().hex[:8]}"
ACTIONS = ("generateContent", "streamGenerateContent", "countTokens")
CANARY = "canary:not-knowctl"


@pytest.fixture(scope="module")
def target(
    simulator_process: Simulator, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, int]]:
    """A gateway on the session's Redis (and its process id, for RSS)."""
    handle, process = start_gateway(
        tmp_path_factory.mktemp("fuzz"),
        "--upstream",
        simulator_process.url,
        "--store",
        redis_url,
        env={"KNOWCTL_USER_LIMITS": "none", "KNOWCTL_MAX_BODY_BYTES": str(MAX_BODY)},
    )
    with process as proc:
        yield handle, proc.pid


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def check(response: httpx.Response) -> None:
    """No 5xx; a refusal is a clear 4xx in Google's error shape."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400 and response.request.method != "HEAD":
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise AssertionError(
                ("not JSON", response.status_code, response.request.url, response.content[:300])
            ) from None
        if isinstance(data, list):  # a JSON-array stream wraps its error
            data = data[0]
        error = data["error"]
        assert error["code"] == response.status_code
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["status"], str) and error["status"]


# --- strategies ----------------------------------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what JSON encoders write
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=30,
)
part = st.fixed_dictionaries({}, optional={"text": json_value, "inlineData": json_value, "role": json_value})
content = st.fixed_dictionaries(
    {}, optional={"role": json_value, "parts": st.lists(part, max_size=3) | json_value}
)
request_body = st.fixed_dictionaries(
    {},
    optional={
        "contents": st.lists(content, max_size=3) | json_value,
        "generationConfig": json_value,
        "systemInstruction": json_value,
        "tools": json_value,
        "safetySettings": json_value,
    },
)


def deep(depth: int) -> bytes:
    return b'{"contents":' + b"[" * depth + b"]" * depth + b"}"


raw_body = st.one_of(
    request_body.map(orjson.dumps),
    json_value.map(orjson.dumps),
    st.binary(max_size=300),  # invalid UTF-8 and plain garbage
    request_body.map(orjson.dumps).flatmap(
        lambda b: st.integers(0, len(b)).map(lambda n: b[:n])
    ),  # truncated
    st.integers(1, 200_000).map(deep),  # deep nesting
    st.integers(MAX_BODY - 100, MAX_BODY + 100).map(
        lambda n: b'{"contents":[{"parts":[{"text":"' + b"x" * n + b'"}]}]}'
    ),  # huge strings, around the body limit
)
content_type = st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "", "*/*"]
)
hostile = st.sampled_from(
    [
        "*\r\nFLUSHALL\r\n",
        "'; redis.call('flushall') --",
        "]]..redis.call('FLUSHALL')..[[",
        "{q:x}*",
        "[a-z]*",
        "\\*",
        "\x00",
        "knowctl:*",
        "*" * 40,
        "a" * 300,
        "gen:*FLUSHALL*",
        "topic:*:*",
        "$(reboot)",
        "%0d%0aFLUSHALL",
    ]
)


# --- the tests -----------------------------------------------------------------------------------


@FUZZ
@given(
    body=raw_body,
    ctype=content_type,
    action=st.sampled_from(ACTIONS),
    sse=st.booleans(),
    priority=st.none()
    | st.sampled_from(["low", "HIGH", "critical", "MEDIUM", "urgent", "0", "-1", "LOW,HIGH"])
    | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20),
)
def test_malformed_gemini_requests_get_a_clear_4xx(
    target: tuple[Gateway, int],
    client: httpx.Client,
    body: bytes,
    ctype: str,
    action: str,
    sse: bool,
    priority: Any,
) -> None:
    gateway, _ = target
    headers = {"content-type": ctype} if ctype else {}
    if priority is not None:
        headers["x-knowctl-priority"] = priority
    query = "?alt=sse" if sse and action == "streamGenerateContent" else ""
    response = client.post(
        f"{gateway.url}/v1beta/models/{MODEL}:{action}{query}", content=body, headers=headers
    )
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        assert response.status_code == 200
        return
    check(response)


# Printable ASCII (an HTTP client sends nothing else in a path), percent-escapes included.
path_text = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"), max_size=80
)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    prefix=st.sampled_from(
        [
            "/",
            "/v1beta/models/",
            "/v1/projects/p/locations/l/publishers/google/models/",
            "/api/",
            "/api/keys/",
            "/topics/",
            "/v1beta1/publishers/google/models/",
        ]
    ),
    rest=path_text,
    body=st.none() | json_value.map(orjson.dumps) | st.binary(max_size=50),
)
def test_odd_paths_and_methods(
    target: tuple[Gateway, int], client: httpx.Client, method: str, prefix: str, rest: str, body: bytes | None
) -> None:
    gateway, _ = target
    if rest.startswith("/"):
        rest = rest.lstrip("/")
    response = client.request(method, gateway.url + prefix + rest, content=body)
    check(response)


@FUZZ
@given(topic=st.text(max_size=120) | hostile)
def test_topic_names(target: tuple[Gateway, int], client: httpx.Client, topic: str) -> None:
    gateway, _ = target
    check(client.get(gateway.url + "/topics/" + quote(topic, safe="")))


@FUZZ
@given(
    path=st.sampled_from(
        [
            "/api/cache/invalidate",
            "/api/keys",
            "/api/topics/prewarm",
            "/api/quota/stats",
            "/api/users/x/usage",
        ]
    ),
    payload=st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "pattern": hostile | json_value,
                "dry_run": json_value,
                "limit": json_value,
                "user": json_value,
                "tier": json_value,
                "max_priority": json_value,
                "trusted": json_value,
                "topics": json_value | st.lists(hostile | st.text(max_size=30), max_size=5),
            },
        ).map(orjson.dumps),
        json_value.map(orjson.dumps),
        st.binary(max_size=100),
    ),
)
def test_admin_bodies(target: tuple[Gateway, int], client: httpx.Client, path: str, payload: bytes) -> None:
    gateway, _ = target
    method = "GET" if path.startswith(("/api/quota", "/api/users")) else "POST"
    check(client.request(method, gateway.url + path, content=payload))


def test_hostile_patterns_and_topics_reach_redis_only_as_data(
    target: tuple[Gateway, int], client: httpx.Client, redis_url: str
) -> None:
    gateway, _ = target
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.set(CANARY, b"alive")
        before = {k for k in raw.scan_iter(count=1000) if not k.startswith(b"knowctl:{c:")}
        attempts = [
            "*\r\nFLUSHALL\r\n", "'; redis.call('flushall') --", "]]..redis.call('FLUSHALL')..[[",
            "{q:x}*", "[a-z]*", "\\*", "\x00", "knowctl:*", "*", "gen:*FLUSHALL*", "topic:*",
            "a" * 300, "*?" * 10, "$(reboot)", "topic:x\nFLUSHALL",
        ]  # fmt: skip
        statuses = []
        for pattern in attempts:
            r = client.post(f"{gateway.url}/api/cache/invalidate", json={"pattern": pattern, "limit": 0})
            check(r)
            statuses.append(r.status_code)
            check(client.get(f"{gateway.url}/topics/" + quote(pattern, safe="")))
        assert statuses.count(400) >= 10  # everything outside the small pattern alphabet is refused
        assert raw.get(CANARY) == b"alive"
        after = {k for k in raw.scan_iter(count=1000) if not k.startswith(b"knowctl:{c:")}
        assert before - after <= {k for k in before if k.startswith(b"knowctl:{c:")}, before - after
    finally:
        raw.delete(CANARY)
        raw.close()


def test_slow_clients_do_not_stop_the_others(
    target: tuple[Gateway, int], client: httpx.Client, simulator: Simulator
) -> None:
    gateway, _ = target
    host, port = LOOPBACK, int(gateway.url.rsplit(":", 1)[1])
    payload = orjson.dumps({"contents": [{"parts": [{"text": f"slow {uuid.uuid4().hex}"}]}]})
    results: list[bytes] = []

    def slow_client() -> None:
        with socket.create_connection((host, port), timeout=30) as sock:
            head = (
                f"POST /v1beta/models/{MODEL}:generateContent HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            )
            sock.sendall(head.encode())
            for i in range(len(payload)):
                sock.sendall(payload[i : i + 1])
                time.sleep(3.0 / len(payload))
            results.append(sock.recv(65536))

    def stalled_client() -> None:  # headers, half a body, then nothing until the test ends
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1beta/models/m:generateContent HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
            )
            time.sleep(4)

    threads = [threading.Thread(target=slow_client) for _ in range(10)]
    threads += [threading.Thread(target=stalled_client) for _ in range(20)]
    for t in threads:
        t.start()
    slowest = 0.0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        started = time.monotonic()
        r = client.post(f"{gateway.url}/v1beta/models/{MODEL}:generateContent",
                        json={"contents": [{"parts": [{"text": uuid.uuid4().hex}]}]})  # fmt: skip
        slowest = max(slowest, time.monotonic() - started)
        assert r.status_code == 200, r.text
    for t in threads:
        t.join()
    assert slowest < 0.5, slowest
    assert len(results) == 10 and all(r.startswith(b"HTTP/1.1 200") for r in results), results


def test_memory_stays_bounded_under_abuse(target: tuple[Gateway, int], client: httpx.Client) -> None:
    gateway, pid = target
    before = rss_bytes(pid)
    big = b'{"contents":[{"parts":[{"text":"' + b"y" * (MAX_BODY - 64) + b'"}]}]}'
    for i in range(300):
        check(client.post(f"{gateway.url}/v1beta/models/{MODEL}:generateContent", content=deep(50_000 + i)))
        check(client.post(f"{gateway.url}/v1beta/models/{MODEL}:generateContent", content=big + b"x" * 200))
        check(client.get(f"{gateway.url}/topics/" + "z" * 150 + str(i)))
    grown = rss_bytes(pid) - before
    assert grown < 30 * 1024 * 1024, f"RSS grew {grown / 1e6:.1f} MB"


def test_malformed_http_gets_googles_error_shape(target: tuple[Gateway, int]) -> None:
    gateway, _ = target
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1beta/models/m:generateContent HTTP/1.1\r\nHost: x\r\n"
            b"X-Knowctl-Priority: \x01\r\nContent-Length: 2\r\n\r\n{}"
        )
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400")
    assert b'"error"' in reply, reply


# --- keys mode: what an outsider and a tenant can send -------------------------------------------

KEYS_ADMIN_TOKEN = "admin-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def keyed_target(
    simulator_process: Simulator, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, str]]:
    """A gateway in keys mode (its own Google key) and a tenant's key."""
    handle, process = start_gateway(
        tmp_path_factory.mktemp("fuzz-keys"),
        "--upstream",
        simulator_process.url,
        "--store",
        redis_url,
        env={
            "KNOWCTL_AUTH_MODE": "keys",
            "KNOWCTL_GOOGLE_API_KEY": "AIza-fuzz-" + uuid.uuid4().hex,
            "KNOWCTL_ADMIN_TOKEN": KEYS_ADMIN_TOKEN,
            "KNOWCTL_USER_LIMITS": "none",
            "KNOWCTL_MAX_BODY_BYTES": str(MAX_BODY),
        },
    )
    with process:
        created = httpx.post(
            handle.url + "/api/keys",
            json={"user": "fuzz-tenant"},
            headers={"authorization": f"Bearer {KEYS_ADMIN_TOKEN}"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        yield handle, created.json()["key"]


def upstream_calls(gateway: Gateway) -> float:
    text = httpx.get(gateway.url + "/api/metrics", timeout=10).text
    prefix = "knowctl_upstream_requests_total{"
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


# Every spelling a credential may take in a query, and made-up values for it.
credential_names = st.sampled_from(
    ["key", "%6Bey", "k%65y", "KEY", "access_token", "%61ccess_token", "oauth_token"]
)
credential_values = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60)
header_credentials = st.sampled_from(["x-goog-api-key", "authorization", "x-api-key", "cookie"])


@FUZZ
@given(
    action=st.sampled_from(ACTIONS),
    body=st.binary(max_size=MAX_BODY // 4) | request_body.map(orjson.dumps),
    query=st.lists(st.tuples(credential_names, credential_values), max_size=3),
    headers=st.lists(st.tuples(header_credentials, credential_values), max_size=2),
)
def test_unauthenticated_calls_are_refused_whatever_they_send(
    keyed_target: tuple[Gateway, str],
    client: httpx.Client,
    action: str,
    body: bytes,
    query: list[tuple[str, str]],
    headers: list[tuple[str, str]],
) -> None:
    """Without a valid key, any body and any credential spelling is a 401 (or a clear 4xx
    for a header no HTTP client may send) and reaches nothing upstream."""
    gateway, _ = keyed_target
    before = upstream_calls(gateway)
    qs = "&".join(f"{name}={quote(value)}" for name, value in query)
    try:
        response = client.post(
            f"{gateway.url}/v1beta/models/{MODEL}:{action}" + (f"?{qs}" if qs else ""),
            content=body,
            headers=[(name, value) for name, value in headers],
        )
    except httpx.LocalProtocolError:
        return  # httpx itself refuses such a header
    check(response)
    assert 400 <= response.status_code < 500
    assert upstream_calls(gateway) == before


model_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=40).map(
    lambda name: "m" + name
)


@FUZZ
@given(
    action=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=30)
    | st.sampled_from(ACTIONS),
    model=model_names,
    body=request_body.map(orjson.dumps),
)
def test_a_tenants_random_actions_and_models(
    keyed_target: tuple[Gateway, str], client: httpx.Client, action: str, model: str, body: bytes
) -> None:
    """A tenant's made-up actions are 404s that go nowhere; made-up models get the provider's
    answer; neither makes metric series of its own."""
    gateway, key = keyed_target
    response = client.post(
        f"{gateway.url}/v1beta/models/{model}:{action}", content=body, headers={"x-goog-api-key": key}
    )
    check(response)
    if action not in ("generateContent", "streamGenerateContent", "countTokens"):
        assert response.status_code == 404
    text = client.get(gateway.url + "/api/metrics").text
    routes = {line.split('route="', 1)[1].split('"', 1)[0] for line in text.splitlines() if 'route="' in line}
    assert action not in routes or action in ACTIONS
