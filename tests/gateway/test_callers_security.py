"""Who is calling, under attack: real ``knowctl serve`` processes on loopback, the official
google-genai SDK as the client, the real Redis, and upstreams that record what reached them.

Each test calls from a loopback address of its own (127.x.y.z: the whole /8 is this host),
so that limits counted per address on the shared Redis are the test's alone.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from google import genai
from google.genai import errors, types

from knowctl.policy import callers as policy
from tests.support.cli import run_knowctl
from tests.support.fixtures import Gateway, Simulator, start_gateway
from tests.support.keyed_upstream import KeyedUpstream, keyed_upstream
from tests.support.recorder import recording_upstream

MODEL = "gemini-2.5-flash"
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
GOOGLE_KEY = "AIza-gateway-own-" + uuid.uuid4().hex


def gen_path(model: str = MODEL) -> str:
    return f"/v1beta/models/{model}:generateContent"


def body(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def prompt() -> str:
    return f"Why is the sky blue? ({uuid.uuid4().hex})"


def own_address() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"


def from_address(address: str) -> httpx.Client:
    """An HTTP client whose calls come from ``address``."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=60)


def sdk(url: str, api_key: str, address: str, headers: dict[str, str] | None = None) -> genai.Client:
    options = types.HttpOptions(base_url=url, headers=headers, httpx_client=from_address(address))
    return genai.Client(api_key=api_key, http_options=options)


def sdk_status(client: genai.Client, text: str, model: str = MODEL) -> int:
    try:
        client.models.generate_content(model=model, contents=text)
    except errors.APIError as error:
        return error.code
    return 200


def admin(url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    return httpx.request(method, url + path, headers=headers, timeout=10, **kwargs)


def used(url: str, name: str, kind: str | None = None) -> int:
    """The minute window's use of ``name`` (of ``kind``) through the admin usage route."""
    response = admin(url, "GET", f"/api/users/{name}/usage", params={"kind": kind} if kind else None)
    assert response.status_code == 200, response.text
    return int(response.json()["windows"][0]["used"])


def passthrough_env(**extra: str) -> dict[str, str]:
    return {"KNOWCTL_AUTH_MODE": "passthrough", "KNOWCTL_ADMIN_TOKEN": ADMIN_TOKEN, **extra}


def keys_env(**extra: str) -> dict[str, str]:
    return {
        "KNOWCTL_AUTH_MODE": "keys",
        "KNOWCTL_GOOGLE_API_KEY": GOOGLE_KEY,
        "KNOWCTL_ADMIN_TOKEN": ADMIN_TOKEN,
        **extra,
    }


def new_key(url: str, user: str) -> str:
    response = admin(url, "POST", "/api/keys", json={"user": user})
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def store_keys(redis_url: str) -> set[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return set(client.scan_iter(match="knowctl:*", count=1000))
    finally:
        client.close()


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def access_users(gateway: Gateway) -> list[str | None]:
    """The user of each generation call's access-log line, in order."""
    users = []
    for line in gateway.log_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("logger") == "knowctl.access" and entry.get("route") not in (None, "admin", "health"):
            users.append(entry.get("user"))
    return users


@pytest.fixture
def keyed() -> Iterator[KeyedUpstream]:
    """An upstream that answers only the credential ``AIza-good-...`` (400 API_KEY_INVALID else)."""
    with keyed_upstream("AIza-good-" + uuid.uuid4().hex) as upstream:
        yield upstream


def good(upstream: KeyedUpstream) -> str:
    return next(iter(upstream.valid))


# --- pass-through: made-up credentials -------------------------------------------------------------


def test_made_up_credentials_share_their_address_limit_and_leave_nothing_in_the_store(
    tmp_path: Path, keyed: KeyedUpstream, redis_url: str
) -> None:
    """70 made-up credentials from one address: the address's 10/minute, not 10 each, and no
    per-credential windows (each used to leave 9 keys for a day)."""
    address = own_address()
    garbage = [f"AIza-made-up-{i}-{uuid.uuid4().hex}" for i in range(70)]
    before = store_keys(redis_url)
    handle, process = start_gateway(
        tmp_path, "--upstream", keyed.url, "--store", redis_url, env=passthrough_env()
    )
    with process:
        statuses = [sdk_status(sdk(handle.url, key, address), prompt()) for key in garbage]
        assert statuses == [400] * 10 + [429] * 60  # Google refused ten; the address's limit the rest
        assert len(keyed.requests) == 10
        assert used(handle.url, address) == 10
        assert set(access_users(handle)) == {address}  # logged as the address they count against

        def only_the_address_left() -> bool:
            # Other tests' daemons share this Redis: look only at what callers leave.
            new = {k for k in store_keys(redis_url) - before if b"{a:" in k or b"{p:" in k or b"{c:" in k}
            return bool(new) and all(f"{{a:{address}}}".encode() in k for k in new)

        eventually(only_the_address_left)  # a refused call's coalescing lease goes in the background
    names = [policy.credential_identity(key).encode() for key in garbage]
    assert not any(name in k for k in store_keys(redis_url) for name in names)


def test_a_credential_seen_to_succeed_counts_in_its_own_bucket(tmp_path: Path, keyed: KeyedUpstream) -> None:
    address = own_address()
    handle, process = start_gateway(
        tmp_path, "--upstream", keyed.url, env=passthrough_env(KNOWCTL_USER_LIMITS="3/minute")
    )
    with process:
        client = sdk(handle.url, good(keyed), address)
        # The first call counts against the address; its success verifies the credential.
        statuses = [sdk_status(client, prompt()) for _ in range(5)]
        assert statuses == [200, 200, 200, 200, 429]
        name = policy.credential_identity(good(keyed))
        assert used(handle.url, name) == 3 and used(handle.url, address) == 1
        # Made-up credentials from the same address get what the address has left: two.
        garbage = [sdk_status(sdk(handle.url, f"AIza-bad-{i}", address), prompt()) for i in range(3)]
        assert garbage == [400, 400, 429]
        assert access_users(handle) == [address] + [name] * 4 + [address] * 3


def test_a_credential_refused_upstream_is_forgotten(tmp_path: Path, simulator: Simulator) -> None:
    """A verified credential that the provider refuses (revoked) counts as its address again."""
    address = own_address()
    handle, process = start_gateway(
        tmp_path, "--upstream", simulator.url, env=passthrough_env(KNOWCTL_USER_LIMITS="50/minute")
    )
    with process:
        client = sdk(handle.url, "AIza-soon-revoked", address)
        assert sdk_status(client, prompt()) == 200
        assert sdk_status(client, prompt()) == 200  # verified: its own bucket
        simulator.configure(fault="denied", count=1)
        assert sdk_status(client, prompt()) == 403
        assert sdk_status(client, prompt()) == 200  # back on the address's windows, verified again
        name = policy.credential_identity("AIza-soon-revoked")
        assert access_users(handle) == [address, name, name, address]


# --- priorities of callers the gateway has not authenticated -------------------------------------------


def queue_depths(url: str, model: str) -> dict[str, int]:
    response = admin(url, "GET", "/api/quota/stats", params={"model": model})
    response.raise_for_status()
    depths: dict[str, int] = response.json()["models"][model]["queue"]
    return depths


def own_queue_depths(url: str, model: str) -> dict[str, int]:
    """The queue of the one verified pass-through credential that has called ``model``: its
    calls spend its own quota (``model/cred-...``), queued apart from the model's."""
    response = admin(url, "GET", "/api/quota/stats")
    response.raise_for_status()
    (own,) = [m for name, m in response.json()["models"].items() if name.startswith(f"{model}/cred-")]
    depths: dict[str, int] = own["queue"]
    return depths


QUEUEING = {
    "KNOWCTL_QUOTA_RPM": "1",
    "KNOWCTL_QUOTA_MINUTE_S": "30",  # the window frees long after the test looked at the queue
    "KNOWCTL_QUEUE_TIMEOUT": "40",
    "KNOWCTL_DRAIN_TIMEOUT": "1",  # stopping answers the waiters instead of waiting for them
    "KNOWCTL_USER_LIMITS": "none",
}


def test_unauthenticated_callers_are_held_to_the_configured_priority(
    tmp_path: Path, keyed: KeyedUpstream
) -> None:
    model = f"sec-{uuid.uuid4().hex[:8]}"
    handle, process = start_gateway(tmp_path, "--upstream", keyed.url, env=passthrough_env(**QUEUEING))
    # The gateway stops first: its waiters are answered at once, and the pool has nothing to wait for.
    with concurrent.futures.ThreadPoolExecutor(4) as pool, process:
        address = own_address()
        client = sdk(handle.url, good(keyed), address)
        assert sdk_status(client, prompt(), model) == 200  # fills the window; verifies the credential
        made_up = sdk(handle.url, "AIza-made-up", address, {"x-knowctl-priority": "CRITICAL"})
        pool.submit(sdk_status, made_up, prompt(), model)
        no_credential = from_address(own_address())
        pool.submit(
            no_credential.post,
            handle.url + gen_path(model),
            json=body(prompt()),
            headers={"x-knowctl-priority": "high"},
        )
        eventually(lambda: queue_depths(handle.url, model)["MEDIUM"] == 2)  # capped: not CRITICAL, not HIGH
        assert queue_depths(handle.url, model) == {"LOW": 0, "MEDIUM": 2, "HIGH": 0, "CRITICAL": 0}
        # Verified, the credential spends its own quota: it fills that, then queues at CRITICAL.
        verified = sdk(handle.url, good(keyed), address, {"x-knowctl-priority": "CRITICAL"})
        assert sdk_status(verified, prompt(), model) == 200
        pool.submit(sdk_status, verified, prompt(), model)
        eventually(lambda: own_queue_depths(handle.url, model)["CRITICAL"] == 1)


# --- fair shares of the quota wait queue -------------------------------------------------------------


def test_one_caller_cannot_fill_the_wait_queue(tmp_path: Path, keyed: KeyedUpstream) -> None:
    """Made-up CRITICAL calls from one address take their share of the queue (3 here) and are
    refused at once beyond it, while another caller still queues."""
    model = f"sec-{uuid.uuid4().hex[:8]}"
    env = passthrough_env(**QUEUEING, KNOWCTL_QUEUE_SIZE="10", KNOWCTL_QUEUE_PER_CALLER="3")
    handle, process = start_gateway(tmp_path, "--upstream", keyed.url, env=env)
    # The gateway stops first: its waiters are answered at once, and the pool has nothing to wait for.
    with concurrent.futures.ThreadPoolExecutor(12) as pool, process:
        assert sdk_status(sdk(handle.url, good(keyed), own_address()), prompt(), model) == 200
        attacker = own_address()

        def flood(i: int) -> tuple[int, float]:
            client = sdk(handle.url, f"AIza-made-up-{i}", attacker, {"x-knowctl-priority": "CRITICAL"})
            started = time.monotonic()
            return sdk_status(client, prompt(), model), time.monotonic() - started

        flooding = [pool.submit(flood, i) for i in range(8)]
        eventually(lambda: sum(f.done() for f in flooding) >= 5)
        time.sleep(0.5)  # nothing more comes back: the other three wait in the queue
        refused = [f.result() for f in flooding if f.done()]
        assert [status for status, _ in refused] == [429] * 5
        assert all(took < 5 for _, took in refused)  # refused at once, not after a wait
        assert queue_depths(handle.url, model)["MEDIUM"] == 3
        # The credential that filled the window is verified: it spends its own quota, and once
        # that is full too its HIGH call queues as HIGH (its own queue: the flood is not in it).
        legitimate = sdk(handle.url, good(keyed), own_address(), {"x-knowctl-priority": "HIGH"})
        assert sdk_status(legitimate, prompt(), model) == 200
        pool.submit(sdk_status, legitimate, prompt(), model)
        eventually(lambda: own_queue_depths(handle.url, model)["HIGH"] == 1)
        # An anonymous caller from another address also still finds room.
        pool.submit(from_address(own_address()).post, handle.url + gen_path(model), json=body(prompt()))
        eventually(lambda: queue_depths(handle.url, model)["MEDIUM"] == 4)


# --- credentials wherever Google reads them --------------------------------------------------------------


@pytest.mark.parametrize(
    "param", ["%6Bey", "access_token", "%24key", "$key", "oauth_token", "access%5Ftoken"]
)
def test_a_credential_in_any_query_form_is_recognised_and_its_answer_stays_its_own(
    tmp_path: Path, keyed: KeyedUpstream, param: str
) -> None:
    handle, process = start_gateway(
        tmp_path, "--upstream", keyed.url, env=passthrough_env(KNOWCTL_USER_LIMITS="none")
    )
    with process, from_address(own_address()) as client:
        text = prompt()
        first = client.post(f"{handle.url}{gen_path()}?{param}={good(keyed)}", json=body(text))
        assert first.status_code == 200 and first.headers["x-knowctl-cache"] == "MISS"
        again = client.post(f"{handle.url}{gen_path()}?{param}={good(keyed)}", json=body(text))
        assert again.headers["x-knowctl-cache"] == "HIT-L1"  # the same credential: its own answer
        bare = client.post(handle.url + gen_path(), json=body(text))
        assert bare.status_code == 400  # went upstream without a credential, as it came
        assert "x-knowctl-cache" not in bare.headers or bare.headers["x-knowctl-cache"] != "HIT-L1"
        assert len(keyed.requests) == 2


def test_a_call_without_a_credential_is_never_cached_in_passthrough(
    tmp_path: Path, simulator: Simulator
) -> None:
    """Nothing tells one credential-less caller from another: no answer is kept for them."""
    handle, process = start_gateway(
        tmp_path, "--upstream", simulator.url, env=passthrough_env(KNOWCTL_USER_LIMITS="none")
    )
    with process, from_address(own_address()) as client:
        text = prompt()
        labels = [
            client.post(handle.url + gen_path(), json=body(text)).headers["x-knowctl-cache"] for _ in range(3)
        ]
        assert labels == ["MISS"] * 3
        assert simulator.stats()["served"] == 3


def test_gateway_keys_in_any_query_form_are_recognised_and_never_forwarded(tmp_path: Path) -> None:
    with recording_upstream() as upstream:
        handle, process = start_gateway(tmp_path, "--upstream", upstream.url, env=keys_env())
        with process:
            key = new_key(handle.url, f"user-{uuid.uuid4().hex[:8]}")
            for query in (f"%6Bey={key}", f"access_token={key}", f"alt=sse;key={key}", f"%24key={key}&x=1"):
                response = httpx.post(f"{handle.url}{gen_path()}?{query}", json=body(prompt()), timeout=10)
                assert response.status_code == 200, (query, response.text)
            for seen in upstream.requests:
                assert key not in seen.path and key not in json.dumps(seen.headers)
                assert "access_token" not in seen.path and "ey=" not in seen.path
            assert upstream.requests[-1].path.endswith("?x=1")


# --- the cache between tenants ----------------------------------------------------------------------------


def cache_label(client: genai.Client, text: str) -> str:
    answer = client.models.generate_content(model=MODEL, contents=text)
    assert answer.sdk_http_response is not None and answer.sdk_http_response.headers is not None
    return answer.sdk_http_response.headers["x-knowctl-cache"]


@pytest.mark.parametrize(("scope", "others_see"), [(None, "MISS"), ("shared", "HIT-L1")])
def test_by_default_a_tenant_cannot_tell_what_another_asked(
    tmp_path: Path, simulator: Simulator, scope: str | None, others_see: str
) -> None:
    env = keys_env(**({"KNOWCTL_CACHE_SCOPE": scope} if scope else {}))
    handle, process = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    with process:
        alice = sdk(handle.url, new_key(handle.url, f"alice-{uuid.uuid4().hex[:6]}"), own_address())
        mallory = sdk(handle.url, new_key(handle.url, f"mallory-{uuid.uuid4().hex[:6]}"), own_address())
        text = prompt()
        assert cache_label(alice, text) == "MISS"
        assert cache_label(mallory, text) == others_see
        assert cache_label(alice, text) == "HIT-L1"


# --- one namespace per kind of caller ------------------------------------------------------------------------


def test_a_key_user_named_like_an_address_is_not_charged_for_it(
    tmp_path: Path, simulator: Simulator, redis_url: str
) -> None:
    """Two daemons on one Redis: anonymous calls from an address on one, a key user named
    like that address on the other. Each counts in its own namespace."""
    address = own_address()
    limits = {"KNOWCTL_USER_LIMITS": "5/minute", "KNOWCTL_ADMIN_TOKEN": ADMIN_TOKEN}
    anonymous, anonymous_process = start_gateway(
        tmp_path,
        "--upstream",
        simulator.url,
        "--store",
        redis_url,
        env={"KNOWCTL_AUTH_MODE": "anonymous", **limits},
    )
    keyed, keyed_process = start_gateway(
        tmp_path, "--upstream", simulator.url, "--store", redis_url, env=keys_env(**limits)
    )
    with anonymous_process, keyed_process, from_address(address) as browser:
        for _ in range(3):
            assert browser.post(anonymous.url + gen_path(), json=body(prompt())).status_code == 200
        client = sdk(keyed.url, new_key(keyed.url, address), address)  # a key user named like it
        assert [sdk_status(client, prompt()) for _ in range(6)] == [200] * 5 + [429]
        assert used(keyed.url, address) == 3  # by its form, the name is the address
        assert used(keyed.url, address, kind="anonymous") == 3
        assert used(keyed.url, address, kind="key") == 5
        env = {"KNOWCTL_URL": keyed.url, "KNOWCTL_ADMIN_TOKEN": ADMIN_TOKEN}
        for kind, expected in (("key", 5), ("anonymous", 3)):
            shown = run_knowctl("users", "usage", address, "--kind", kind, "--json", env=env)
            assert shown.returncode == 0, shown.stderr
            found = json.loads(shown.stdout)
            assert (found["kind"], found["windows"][0]["used"]) == (kind, expected)
        bad = run_knowctl("users", "usage", "alice", "--kind", "anonymous", env=env)
        assert bad.returncode == 2 and "address" in bad.stderr


def test_a_user_name_with_a_trailing_newline_is_refused(tmp_path: Path, simulator: Simulator) -> None:
    handle, process = start_gateway(tmp_path, "--upstream", simulator.url, env=keys_env())
    with process:
        for name in ("alice\n", "alice\r\n", "\nalice"):
            refused = admin(handle.url, "POST", "/api/keys", json={"user": name})
            assert refused.status_code == 400 and "user" in refused.json()["error"]["message"]
        assert admin(handle.url, "GET", "/api/users/alice%0A/usage").status_code == 400
        assert not [
            k for k in admin(handle.url, "GET", "/api/keys").json()["keys"] if k["user"] != k["user"].strip()
        ]


# --- what goes upstream on the gateway's own credentials -------------------------------------------------------


def test_cookies_and_billing_choices_never_reach_the_upstream(tmp_path: Path) -> None:
    with recording_upstream() as upstream:
        handle, process = start_gateway(tmp_path, "--upstream", upstream.url, env=keys_env())
        with process:
            key = new_key(handle.url, f"user-{uuid.uuid4().hex[:8]}")
            browser_state = {
                "cookie": "session=secret-session",
                "x-goog-user-project": "someone-elses-project",
                "x-goog-authuser": "1",
            }
            client = sdk(handle.url, key, own_address(), browser_state)
            assert sdk_status(client, prompt()) == 200
            response = httpx.post(
                f"{handle.url}{gen_path()}?userProject=other&%24userProject=other",
                json=body(prompt()),
                headers={"x-goog-api-key": key, "cookie": "a=b", "cookie2": "c=d"},
                timeout=10,
            )
            assert response.status_code == 200
    assert len(upstream.requests) == 2
    for seen in upstream.requests:
        assert seen.headers["x-goog-api-key"] == GOOGLE_KEY
        assert not {"cookie", "cookie2", "x-goog-user-project", "x-goog-authuser"} & set(seen.headers)
        assert "userProject" not in seen.path and "secret-session" not in json.dumps(seen.headers)
