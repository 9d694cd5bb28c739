"""The gateway as an attacker meets it: every model action limited and counted, nothing read
before the caller is known, metric series that requests cannot multiply, provider errors
without the gateway's account facts, the simulator's routes closed to the network.

Real ``knowctl serve`` processes on loopback, the simulator as upstream, the real Redis,
the official google-genai SDK as the tenant's client.
"""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from knowctl.daemon.app import Gateway as GatewayApp
from knowctl.settings import Settings
from knowctl.simulator.app import SIMULATED_PROJECT
from tests.support.fixtures import Gateway, Simulator, start_gateway

ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
GOOGLE_KEY = "AIza-gateway-own-" + uuid.uuid4().hex
MODEL = "gemini-2.5-flash"
EMBED_MODEL = "text-embedding-004"


def keys_env(**extra: str) -> dict[str, str]:
    return {
        "KNOWCTL_AUTH_MODE": "keys",
        "KNOWCTL_GOOGLE_API_KEY": GOOGLE_KEY,
        "KNOWCTL_ADMIN_TOKEN": ADMIN_TOKEN,
        **extra,
    }


def admin(gateway: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    return httpx.request(method, gateway.url + path, headers=headers, timeout=10, **kwargs)


def new_key(gateway: Gateway, **fields: Any) -> str:
    response = admin(gateway, "POST", "/api/keys", json={"user": f"u-{uuid.uuid4().hex[:8]}", **fields})
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def sdk(gateway: Gateway, key: str) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=gateway.url))


def generate_body(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def is_google_error(response: httpx.Response, status: int) -> bool:
    error = response.json().get("error", {})
    return response.status_code == status and error.get("code") == status and bool(error.get("message"))


@pytest.fixture(scope="module")
def keyed(
    simulator_process: Simulator, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """Keys mode on Redis: 5 calls a minute per user, a provider quota that counts."""
    handle, process = start_gateway(
        tmp_path_factory.mktemp("security"),
        "--upstream",
        simulator_process.url,
        "--store",
        redis_url,
        env=keys_env(KNOWCTL_USER_LIMITS="5/minute", KNOWCTL_QUOTA_RPM="100000"),
    )
    with process:
        yield handle


def quota_used(gateway: Gateway, model: str) -> int:
    stats = admin(gateway, "GET", "/api/quota/stats", params={"model": model}).json()
    used: int = stats["models"][model]["windows"]["rpm"]["used"]
    return used


def upstream_calls(gateway: Gateway) -> float:
    """All calls the gateway has sent upstream (knowctl_upstream_requests_total)."""
    text = httpx.get(gateway.url + "/api/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("knowctl_upstream_requests_total{")
    )


# --- every model action is limited and counted ----------------------------------------------


def test_embeddings_count_against_the_callers_limits_and_the_provider_quota(
    keyed: Gateway, simulator: Simulator
) -> None:
    """A 5/minute key: embedContent and batchEmbedContents calls (through the SDK) use up its
    limit like generation calls, the RateLimit header says so, and the provider quota of
    the embedding model counts each text (a batch of two counts two requests)."""
    key = new_key(keyed)
    client = sdk(keyed, key)
    quota_before = quota_used(keyed, EMBED_MODEL)
    for text in ("one", "two", "three"):
        client.models.embed_content(model=EMBED_MODEL, contents=text)
    client.models.embed_content(model=EMBED_MODEL, contents=["four", "five"])  # batchEmbedContents
    remaining = []
    response = httpx.post(
        f"{keyed.url}/v1beta/models/{EMBED_MODEL}:embedContent",
        headers={"x-goog-api-key": key},
        json={"content": {"parts": [{"text": "six"}]}},
        timeout=10,
    )
    assert response.status_code == 200
    remaining.append(re.search(r'"minute";r=(\d+)', response.headers["ratelimit"]))
    assert remaining[0] is not None and remaining[0].group(1) == "0"
    assert quota_used(keyed, EMBED_MODEL) == quota_before + 6
    with pytest.raises(errors.ClientError) as refused:
        client.models.embed_content(model=EMBED_MODEL, contents="seven")
    assert refused.value.code == 429
    with pytest.raises(errors.ClientError) as also_refused:  # one limit for every action
        client.models.generate_content(model=MODEL, contents="eight")
    assert also_refused.value.code == 429
    assert simulator.stats()["other"] == 5  # the refused calls reached nothing


def test_count_tokens_and_listings_count_against_limits_but_spend_no_provider_quota(
    keyed: Gateway, simulator: Simulator
) -> None:
    key = new_key(keyed)
    client = sdk(keyed, key)
    quota_before = quota_used(keyed, MODEL)
    for _ in range(3):
        client.models.count_tokens(model=MODEL, contents="how many?")
    list(client.models.list())
    httpx.get(f"{keyed.url}/v1beta/models/{MODEL}", headers={"x-goog-api-key": key}, timeout=10)
    assert quota_used(keyed, MODEL) == quota_before
    with pytest.raises(errors.ClientError) as refused:
        client.models.count_tokens(model=MODEL, contents="one too many")
    assert refused.value.code == 429


@pytest.mark.parametrize("action", ["fooBar", "generateMessage", "streamRawPredict"])
def test_keys_mode_forwards_only_known_actions(keyed: Gateway, simulator: Simulator, action: str) -> None:
    key = new_key(keyed)
    before = upstream_calls(keyed)
    response = httpx.post(
        f"{keyed.url}/v1beta/models/{MODEL}:{action}",
        headers={"x-goog-api-key": key},
        json=generate_body("hi"),
        timeout=10,
    )
    assert is_google_error(response, 404)
    assert upstream_calls(keyed) == before  # nothing went upstream


def test_the_allowed_actions_are_configurable(
    simulator_process: Simulator, simulator: Simulator, tmp_path: Path
) -> None:
    handle, process = start_gateway(
        tmp_path,
        "--upstream",
        simulator_process.url,
        env=keys_env(KNOWCTL_ALLOWED_ACTIONS="generateContent,countTokens"),
    )
    with process:
        key = new_key(handle)
        client = sdk(handle, key)
        assert client.models.generate_content(model=MODEL, contents="hi").text
        with pytest.raises(errors.ClientError) as refused:
            client.models.embed_content(model=EMBED_MODEL, contents="not here")
        assert refused.value.code == 404
    assert simulator.stats()["other"] == 0


def test_passthrough_forwards_any_action_against_the_callers_limits(
    simulator_process: Simulator, simulator: Simulator, tmp_path: Path
) -> None:
    """Callers who bring their own credentials pay for what they send: an action the gateway
    does not know is forwarded (and counted against their limits)."""
    handle, process = start_gateway(
        tmp_path, "--upstream", simulator_process.url, env={"KNOWCTL_USER_LIMITS": "2/minute"}
    )
    with process:
        url = f"{handle.url}/v1beta/models/{MODEL}:fooBar"
        statuses = [
            httpx.post(url, headers={"x-goog-api-key": "AIza-own"}, json={}, timeout=10).status_code
            for _ in range(3)
        ]
    assert statuses == [404, 404, 429]  # the simulator's 404 twice, then the caller's limit


# --- nothing is read before the caller is known ---------------------------------------------


def test_a_caller_without_a_key_is_refused_before_its_body_is_sent(keyed: Gateway) -> None:
    """The refusal comes on the head alone: the client has sent none of its 9 MB, gets a 401
    in Google's shape, and the connection closes (its body is never taken in)."""
    host, port = keyed.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            f"POST /v1beta/models/{MODEL}:generateContent HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {9 * 1024 * 1024}\r\n\r\n".encode()
        )
        received = b""
        while not received.endswith(b"}") or b"\r\n\r\n" not in received:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
        head, _, answer = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401")
        assert b"connection: close" in head.lower()
        assert b'"UNAUTHENTICATED"' in answer
        assert conn.recv(65536) == b""  # closed by the gateway


def test_an_unknown_key_with_a_malformed_body_is_a_401_not_a_parse_error(keyed: Gateway) -> None:
    response = httpx.post(
        f"{keyed.url}/v1beta/models/{MODEL}:generateContent",
        headers={"x-goog-api-key": "kc_not-a-key", "content-type": "application/json"},
        content=b"{not json",
        timeout=10,
    )
    assert is_google_error(response, 401)


# --- metric series are bounded ---------------------------------------------------------------


def metric_labels(gateway: Gateway, family: str, label: str) -> set[str]:
    text = httpx.get(gateway.url + "/api/metrics", timeout=10).text
    pattern = re.compile(rf'^{family}\{{.*?{label}="([^"]*)"', re.MULTILINE)
    return set(pattern.findall(text))


def test_made_up_actions_and_models_make_no_series_of_their_own(
    simulator_process: Simulator, simulator: Simulator, tmp_path: Path
) -> None:
    """Routes are labelled by the actions the gateway knows, models by the names configured
    or answered by the provider: random ones, authenticated or not, land in ``other``."""
    handle, process = start_gateway(
        tmp_path,
        "--upstream",
        simulator_process.url,
        env=keys_env(KNOWCTL_USER_LIMITS="none", KNOWCTL_QUOTA_RPM="100000"),
    )
    with process:
        key = new_key(handle)
        simulator.configure(fault="denied", count=200)  # the provider knows none of them
        with httpx.Client(base_url=handle.url, timeout=10) as client:
            for i in range(60):
                noise = uuid.uuid4().hex[:10]
                letters = noise.translate(str.maketrans("0123456789", "ghijklmnop"))
                client.post(f"/v1beta/models/{MODEL}:x{letters}", json={})  # no key
                client.post(f"/v1beta/models/{MODEL}:y{letters}", json={}, headers={"x-goog-api-key": key})
                client.post(
                    f"/v1beta/models/made-up-{i}-{noise}:generateContent",
                    json=generate_body(noise),
                    headers={"x-goog-api-key": key},
                )
        routes = metric_labels(handle, "knowctl_http_requests_total", "route")
        models = metric_labels(handle, "knowctl_upstream_requests_total", "model")
        quota_models = metric_labels(handle, "knowctl_quota_decisions_total", "model")
    assert not [r for r in routes if r.startswith(("x", "y"))]
    assert "other" in routes
    assert models == {"other"} and quota_models == {"other"}


# --- provider errors do not tell tenants about the gateway's account -------------------------


def test_provider_errors_reach_tenants_without_the_accounts_facts(
    keyed: Gateway, simulator: Simulator
) -> None:
    """The provider refuses the gateway's own credentials (API disabled in its project, key
    not valid): the tenant gets a 502 naming a request id and nothing of the project; the
    operator's log has the original under that id; the quota reservation goes back."""
    key = new_key(keyed)
    model = f"denied-{uuid.uuid4().hex[:6]}"
    for fault in ("denied", "bad_key"):
        simulator.configure(fault=fault, count=1)
        before = quota_used(keyed, model)
        response = httpx.post(
            f"{keyed.url}/v1beta/models/{model}:generateContent",
            headers={"x-goog-api-key": key},
            json=generate_body(uuid.uuid4().hex),
            timeout=10,
        )
        assert is_google_error(response, 502), response.text
        text = response.text + str(response.headers)
        for fact in (SIMULATED_PROJECT, "consumer", "console.developers", "ErrorInfo", GOOGLE_KEY):
            assert fact not in text
        request_id = response.headers["x-request-id"]
        assert request_id in response.json()["error"]["message"]
        logged = [line for line in keyed.log_text().splitlines() if request_id in line]
        assert any(SIMULATED_PROJECT in line or "API_KEY_INVALID" in line for line in logged)
        assert quota_used(keyed, model) == before  # the provider spent nothing on it


def test_a_tenants_own_error_keeps_its_message_without_account_facts(keyed: Gateway) -> None:
    """A 400 about the request itself stays a 400 with its message, which the SDK reads."""
    client = sdk(keyed, new_key(keyed))
    with pytest.raises(errors.ClientError) as bad:
        client.models.generate_content(
            model=MODEL, contents="x", config=types.GenerateContentConfig(max_output_tokens=0)
        )
    assert bad.value.code == 400
    assert bad.value.message is not None and "max_output_tokens" in bad.value.message
    assert "request id" in bad.value.message


def test_passthrough_calls_refused_for_their_credentials_give_their_quota_back(
    simulator_process: Simulator, simulator: Simulator, tmp_path: Path
) -> None:
    """70 calls with garbage credentials that the provider refuses do not use up a quota of
    5 a minute: the next valid caller is served."""
    handle, process = start_gateway(
        tmp_path,
        "--upstream",
        simulator_process.url,
        env={"KNOWCTL_USER_LIMITS": "none", "KNOWCTL_QUOTA_RPM": "5"},
    )
    model = f"garbage-{uuid.uuid4().hex[:6]}"
    with process, httpx.Client(base_url=handle.url, timeout=10) as client:
        simulator.configure(fault="bad_key", count=70)
        for i in range(70):
            refused = client.post(
                f"/v1beta/models/{model}:generateContent",
                headers={"x-goog-api-key": f"garbage-{i}"},
                json=generate_body(f"garbage {i}"),
            )
            assert refused.status_code == 400  # the provider's answer, passed on
        served = client.post(
            f"/v1beta/models/{model}:generateContent",
            headers={"x-goog-api-key": "AIza-valid"},
            json=generate_body("a real question"),
        )
    assert served.status_code == 200, served.text


# --- the simulator's routes -------------------------------------------------------------------


def asgi_get(
    app: GatewayApp, path: str, client: str, headers: list[tuple[bytes, bytes]] | None = None
) -> int:
    """One GET through the gateway's ASGI callable, as from ``client``: its status."""
    return asgi_request(app, path, client, headers)[0]


def asgi_request(
    app: GatewayApp, path: str, client: str, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, bytes]:
    """One GET through the gateway's ASGI callable, as from ``client``: status and body."""
    status = 0
    body = b""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers or [],
        "client": (client, 40000),
    }
    asyncio.run(app(scope, receive, send))
    return status, body


@pytest.mark.parametrize(
    "path", ["/_simulator/config", "/_simulator/stats", "/_simulator/upstream/v1beta/models"]
)
def test_the_simulators_routes_answer_only_on_loopback_without_a_token(path: str) -> None:
    from knowctl.simulator.app import SimulatorApp, SimulatorConfig

    app = GatewayApp(Settings(simulate=True), simulator=SimulatorApp(SimulatorConfig()))
    assert asgi_get(app, path, "203.0.113.9") == 403
    assert asgi_get(app, path, "127.0.0.1") == 200


def test_the_simulators_control_routes_take_the_admin_token() -> None:
    from knowctl.simulator.app import SimulatorApp, SimulatorConfig

    token = uuid.uuid4().hex
    app = GatewayApp(Settings(simulate=True, admin_token=token), simulator=SimulatorApp(SimulatorConfig()))
    bearer = [(b"authorization", f"Bearer {token}".encode())]
    assert asgi_get(app, "/_simulator/config", "203.0.113.9") == 401
    assert asgi_get(app, "/_simulator/config", "203.0.113.9", bearer) == 200
    assert asgi_get(app, "/_simulator/upstream/v1beta/models", "203.0.113.9", bearer) == 403


def test_readiness_never_shows_a_password_in_the_upstream_url() -> None:
    app = GatewayApp(Settings(upstream_url="http://user:up-s3cret@127.0.0.1:9/base"))
    status, body = asgi_request(app, "/api/ready", "127.0.0.1")
    assert status == 503  # not started: "starting", and the page says where calls would go
    assert b"up-s3cret" not in body
    assert b"user:***@127.0.0.1:9" in body


def test_a_body_of_countless_tiny_objects_is_refused_before_it_is_parsed(keyed: Gateway) -> None:
    """Within the size limit, 200,000 tiny Content objects would parse into hundreds of MB."""
    key = new_key(keyed)
    tiny = b'{"role":"user","parts":[]},' * 200_000
    response = httpx.post(
        f"{keyed.url}/v1beta/models/{MODEL}:generateContent",
        headers={"x-goog-api-key": key, "content-type": "application/json"},
        content=b'{"contents":[' + tiny[:-1] + b"]}",
        timeout=30,
    )
    assert is_google_error(response, 400)
    assert "JSON objects" in response.json()["error"]["message"]
