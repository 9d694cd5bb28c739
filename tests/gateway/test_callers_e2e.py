"""Callers end to end: real ``knowctl serve`` processes, the official google-genai SDK, the
real Redis, and the ``knowctl keys`` / ``knowctl users`` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from google import genai
from google.genai import errors, types

from tests.support.fixtures import Gateway, Simulator, start_gateway
from tests.support.net import LOOPBACK, free_port
from tests.support.recorder import recording_upstream

MODEL = "gemini-2.5-flash"
GEN = f"/v1beta/models/{MODEL}:generateContent"
VERTEX_GEN = f"/v1/projects/demo/locations/us-central1/publishers/google/models/{MODEL}:generateContent"
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
GOOGLE_KEY = "AIza-gateway-own-" + uuid.uuid4().hex


def keys_env(**extra: str) -> dict[str, str]:
    return {
        "KNOWCTL_AUTH_MODE": "keys",
        "KNOWCTL_GOOGLE_API_KEY": GOOGLE_KEY,
        "KNOWCTL_ADMIN_TOKEN": ADMIN_TOKEN,
        "KNOWCTL_LOG_LEVEL": "debug",  # the most talkative level must still show no secret
        **extra,
    }


def body(text: str = "Why is the sky blue?") -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def admin(url: str, method: str, path: str, token: str | None = ADMIN_TOKEN, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, url + path, headers=headers, timeout=10, **kwargs)


def new_key(url: str, user: str, **fields: Any) -> dict[str, Any]:
    response = admin(url, "POST", "/api/keys", json={"user": user, **fields})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def unique(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sdk(url: str, key: str) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=url))


@pytest.fixture(scope="module")
def keyed(
    simulator_process: Simulator, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway in keys mode on the real Redis, with an admin token."""
    handle, process = start_gateway(
        tmp_path_factory.mktemp("callers"),
        "--upstream",
        simulator_process.url,
        "--store",
        redis_url,
        env=keys_env(),
    )
    with process:
        yield handle


# --- gateway keys through the official SDK ------------------------------------------------------------


def test_sdk_with_a_gateway_key_gets_through(keyed: Gateway, simulator: Simulator) -> None:
    client = sdk(keyed.url, new_key(keyed.url, unique())["key"])  # kept: the SDK closes on collection
    answer = client.models.generate_content(model=MODEL, contents="Why is the sea salty?")
    assert answer.text
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="Stream me."))
    assert "".join(c.text or "" for c in chunks)


def test_wrong_and_revoked_keys_are_refused_and_nothing_is_forwarded(
    keyed: Gateway, simulator: Simulator
) -> None:
    created = new_key(keyed.url, unique())
    before = simulator.stats()
    wrong_client, client = sdk(keyed.url, created["key"] + "x"), sdk(keyed.url, created["key"])
    with pytest.raises(errors.ClientError) as wrong:
        wrong_client.models.generate_content(model=MODEL, contents="hello")
    assert wrong.value.code == 401 and wrong.value.status == "UNAUTHENTICATED"
    revoked = admin(keyed.url, "DELETE", f"/api/keys/{created['key_id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked"]
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model=MODEL, contents="hello")
    assert refused.value.code == 403 and refused.value.status == "PERMISSION_DENIED"
    no_key = httpx.post(keyed.url + GEN, json=body(), timeout=10)
    assert no_key.status_code == 401 and no_key.json()["error"]["status"] == "UNAUTHENTICATED"
    assert simulator.stats() == before  # nothing reached the upstream


def test_eleventh_call_in_a_minute_is_refused_and_others_are_unaffected(keyed: Gateway) -> None:
    first, second = new_key(keyed.url, unique())["key"], new_key(keyed.url, unique())["key"]
    answers = [
        httpx.post(keyed.url + GEN, json=body(f"q{i}"), headers={"x-goog-api-key": first}, timeout=10)
        for i in range(11)
    ]
    assert [r.status_code for r in answers] == [200] * 10 + [429]
    assert (
        answers[0].headers["ratelimit-policy"]
        == '"minute";q=10;w=60, "hour";q=100;w=3600, "day";q=500;w=86400'
    )
    assert answers[0].headers["ratelimit"].startswith('"minute";r=9;t=')
    refused = answers[-1]
    assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit"].startswith('"minute";r=0;t=')
    details = refused.json()["error"]["details"]
    assert any(d["@type"].endswith("RetryInfo") for d in details)
    other = httpx.post(keyed.url + GEN, json=body("q0"), headers={"x-goog-api-key": second}, timeout=10)
    assert other.status_code == 200
    assert other.headers["ratelimit"].startswith('"minute";r=9;t=')


def test_keys_never_reach_the_upstream(tmp_path: Path) -> None:
    """Gemini calls go up with the gateway's own key; a Vertex call, for which the gateway
    holds no credential, goes up with none rather than with the caller's gateway key."""
    with recording_upstream() as upstream:
        handle, process = start_gateway(tmp_path, "--upstream", upstream.url, env=keys_env())
        with process:
            key = new_key(handle.url, unique())["key"]
            assert httpx.post(f"{handle.url}{GEN}?key={key}", json=body(), timeout=10).status_code == 200
            headers = {"authorization": f"Bearer {key}"}
            assert (
                httpx.post(handle.url + VERTEX_GEN, json=body(), headers=headers, timeout=10).status_code
                == 200
            )
    gemini, vertex = upstream.requests[-2:]
    assert gemini.headers["x-goog-api-key"] == GOOGLE_KEY and "key=" not in gemini.path
    assert "authorization" not in vertex.headers and "x-goog-api-key" not in vertex.headers
    for seen in upstream.requests:
        assert key not in json.dumps(seen.headers) and key not in seen.path


# --- spoofing ---------------------------------------------------------------------------------------------


def usage_of(url: str, user: str) -> dict[str, Any]:
    response = admin(url, "GET", f"/api/users/{user}/usage")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def test_x_knowctl_user_is_honoured_only_for_trusted_keys(keyed: Gateway) -> None:
    plain_user, backend, victim = unique("plain"), unique("backend"), unique("victim")
    plain = new_key(keyed.url, plain_user)["key"]
    trusted = new_key(keyed.url, backend, trusted=True)["key"]
    for key in (plain, trusted):
        headers = {"x-goog-api-key": key, "x-knowctl-user": victim}
        assert httpx.post(keyed.url + GEN, json=body(), headers=headers, timeout=10).status_code == 200
    assert usage_of(keyed.url, victim)["windows"][0]["used"] == 0
    assert usage_of(keyed.url, plain_user)["windows"][0]["used"] == 1
    assert usage_of(keyed.url, f"{backend}:{victim}")["windows"][0]["used"] == 1


def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
    tmp_path: Path, simulator_process: Simulator
) -> None:
    env = {"KNOWCTL_AUTH_MODE": "anonymous", "KNOWCTL_USER_LIMITS": "3/minute"}
    with ExitStack() as stack:
        untrusted, process = start_gateway(
            tmp_path,
            "--upstream",
            simulator_process.url,
            env={**env, "KNOWCTL_TRUSTED_PROXIES": "10.0.0.0/8"},
        )
        stack.enter_context(process)
        trusted, process = start_gateway(
            tmp_path, "--upstream", simulator_process.url, env={**env, "KNOWCTL_TRUSTED_PROXIES": LOOPBACK}
        )
        stack.enter_context(process)
        spoofed = [
            httpx.post(
                untrusted.url + GEN, json=body(), headers={"x-forwarded-for": f"198.51.100.{i}"}, timeout=10
            ).status_code
            for i in range(4)
        ]
        assert spoofed == [200, 200, 200, 429]  # all counted against the real peer
        believed = [
            httpx.post(
                trusted.url + GEN,
                json=body(),
                headers={"x-forwarded-for": f"6.6.6.6, 198.51.100.{i}"},
                timeout=10,
            ).status_code
            for i in range(4)
        ]
        assert believed == [200] * 4  # four different clients behind our proxy
        assert usage_of(trusted.url, "198.51.100.2")["windows"][0]["used"] == 1


# --- limits across daemons --------------------------------------------------------------------------------


def test_limits_hold_with_two_daemons_sharing_redis(
    tmp_path: Path, simulator_process: Simulator, redis_url: str
) -> None:
    with ExitStack() as stack:
        daemons = []
        for _ in range(2):
            handle, process = start_gateway(
                tmp_path, "--upstream", simulator_process.url, "--store", redis_url, env=keys_env()
            )
            stack.enter_context(process)
            daemons.append(handle)
        key = new_key(daemons[0].url, unique())["key"]
        statuses = [
            httpx.post(
                daemons[i % 2].url + GEN, json=body(f"x{i}"), headers={"x-goog-api-key": key}, timeout=10
            ).status_code
            for i in range(16)
        ]
        assert statuses.count(200) == 10 and statuses.count(429) == 6
        assert statuses[:10] == [200] * 10


# --- admin authentication and secrets -----------------------------------------------------------------------


def test_admin_needs_the_token(keyed: Gateway) -> None:
    for token in (None, "wrong-token"):
        for method, path in (("GET", "/api/keys"), ("POST", "/api/keys"), ("GET", "/api/users/x/usage")):
            response = admin(keyed.url, method, path, token=token, json={"user": "mallory"})
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["status"] == "UNAUTHENTICATED"
    assert admin(keyed.url, "GET", "/api/keys").status_code == 200


def test_without_a_token_admin_answers_on_loopback(tmp_path: Path, simulator_process: Simulator) -> None:
    handle, process = start_gateway(tmp_path, "--upstream", simulator_process.url)
    with process:
        assert admin(handle.url, "GET", "/api/keys", token=None).status_code == 200
        created = admin(handle.url, "POST", "/api/keys", token=None, json={"user": "local"})
        assert created.status_code == 201
        assert "loopback" in handle.log_text()


def test_no_plain_key_in_the_store_and_no_secret_in_the_log(keyed: Gateway, redis_url: str) -> None:
    created = new_key(keyed.url, unique(), trusted=True)
    key = created["key"]
    headers = {"x-goog-api-key": key, "x-knowctl-user": "session-1"}
    assert httpx.post(keyed.url + GEN, json=body(), headers=headers, timeout=10).status_code == 200
    httpx.post(keyed.url + GEN, json=body(), headers={"x-goog-api-key": key + "wrong"}, timeout=10)
    admin(keyed.url, "GET", "/api/keys", token="wrong-" + ADMIN_TOKEN)
    admin(keyed.url, "DELETE", f"/api/keys/{created['key_id']}")
    client = redis.Redis.from_url(redis_url)
    try:
        for name in client.scan_iter(match="knowctl:*"):
            assert key.encode() not in name
            kind = client.type(name)
            if kind == b"hash":
                assert all(key.encode() not in v for v in client.hgetall(name).values())
            elif kind == b"string":
                assert key.encode() not in (client.get(name) or b"")
    finally:
        client.close()
    log = keyed.log_text()
    assert created["key_id"] in admin(keyed.url, "GET", "/api/keys").text
    for secret in (key, key + "wrong", ADMIN_TOKEN, GOOGLE_KEY, key[3:20]):
        assert secret not in log


# --- the CLI ---------------------------------------------------------------------------------------------------


def cli(
    *args: str, url: str, token: str | None = ADMIN_TOKEN, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNOWCTL_")}
    env["KNOWCTL_URL"] = url
    if token is not None:
        env["KNOWCTL_ADMIN_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "knowctl", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_keys_and_usage(keyed: Gateway) -> None:
    user = unique("alice")
    made = cli("keys", "create", "--user", user, "--max-priority", "high", "--json", url=keyed.url)
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)  # exactly one JSON document on stdout
    assert created["user"] == user and created["key"].startswith("kc_")
    assert created["max_priority"] == "HIGH"
    headers = {"x-goog-api-key": created["key"]}
    assert httpx.post(keyed.url + GEN, json=body(), headers=headers, timeout=10).status_code == 200

    listed = cli("keys", "list", "--json", url=keyed.url)
    assert listed.returncode == 0 and created["key"] not in listed.stdout
    assert any(k["key_id"] == created["key_id"] for k in json.loads(listed.stdout)["keys"])
    table = cli("keys", "list", url=keyed.url)
    assert table.returncode == 0 and created["key"] not in table.stdout

    usage = cli("users", "usage", user, "--json", url=keyed.url)
    assert usage.returncode == 0, usage.stderr
    assert json.loads(usage.stdout)["windows"][0]["used"] == 1
    assert cli("users", "usage", user, url=keyed.url).returncode == 0

    assert cli("keys", "revoke", created["key_id"], url=keyed.url, stdin="n\n").returncode != 0
    revoked = cli("keys", "revoke", created["key_id"], "--yes", url=keyed.url)
    assert revoked.returncode == 0 and created["key_id"] in revoked.stdout
    assert httpx.post(keyed.url + GEN, json=body(), headers=headers, timeout=10).status_code == 403

    bad = cli("keys", "create", "--user", "a b", url=keyed.url)
    assert bad.returncode == 2 and "user" in bad.stderr


def test_cli_exit_codes_for_auth_and_unreachable(keyed: Gateway) -> None:
    refused = cli("keys", "list", url=keyed.url, token="wrong-token")
    assert refused.returncode == 4 and "401" in refused.stderr
    down = cli("keys", "create", "--user", "bob", "--json", url=f"http://{LOOPBACK}:{free_port()}")
    assert down.returncode == 3
    assert "cannot reach the knowctl daemon" in down.stderr and down.stdout == ""


def test_keys_mode_without_gateway_credentials_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNOWCTL_")}
    env.update(KNOWCTL_AUTH_MODE="keys", KNOWCTL_LOG_FORMAT="json")
    upstream = f"http://{LOOPBACK}:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "knowctl", "serve", "--port", "0", "--upstream", upstream],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "KNOWCTL_AUTH_MODE=keys needs Google credentials" in done.stderr + done.stdout
