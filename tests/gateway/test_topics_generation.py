"""Who may make the topic API generate, and what counts towards a topic's popularity: real
``knowctl serve`` processes over loopback HTTP, the simulator as the upstream (its stats count
every generation), keys made with the admin API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fixtures import Gateway, Simulator, start_gateway
from tests.support.net import LOOPBACK, free_port

ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
ANON = {"KNOWCTL_AUTH_MODE": "anonymous"}


def keys_env(**extra: str) -> dict[str, str]:
    # The gateway holds a Google key of its own: a MISS would spend it.
    return {
        "KNOWCTL_AUTH_MODE": "keys",
        "KNOWCTL_GOOGLE_API_KEY": "AIza-gateway-own-" + uuid.uuid4().hex,
        "KNOWCTL_ADMIN_TOKEN": ADMIN_TOKEN,
        **extra,
    }


def name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def model_name() -> str:
    """A model of the test's own, so that the simulator's by_model counts only its topics."""
    return f"gemini-topics-{uuid.uuid4().hex[:8]}"


def generations(simulator: Simulator, model: str) -> int:
    return int(simulator.stats()["by_model"].get(model, 0))


def admin(gw: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    return httpx.request(method, gw.url + path, headers=headers, timeout=30, **kwargs)


def new_key(gw: Gateway) -> str:
    created = admin(gw, "POST", "/api/keys", json={"user": name("user")})
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


def popular(gw: Gateway) -> dict[str, Any]:
    response = admin(gw, "GET", "/api/topics/popular?limit=1000")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def topic(gw: Gateway, topic_name: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{gw.url}/topics/{topic_name}", headers=headers, timeout=30)


def assert_not_available(response: httpx.Response) -> None:
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["code"] == 404 and error["status"] == "NOT_FOUND"
    assert "is not available" in error["message"]
    assert response.headers["cache-control"] == "no-store"


# --- popularity counts only answers served ---------------------------------------------------------------


def test_a_caller_over_its_limit_makes_no_topic_popular_and_nothing_generated(
    tmp_path: Path, simulator: Simulator
) -> None:
    model = model_name()
    env = {
        **ANON,
        "KNOWCTL_USER_LIMITS": "1/minute",
        "KNOWCTL_TOPICS_MODEL": model,
        "KNOWCTL_TOPICS_POPULAR_THRESHOLD": "3",
        "KNOWCTL_TOPICS_REFRESH_INTERVAL": "0.5",
    }
    gw, proc = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    with proc:
        assert topic(gw, name("first")).status_code == 200  # the caller's one call this minute
        refused = [name("refused") for _ in range(20)]
        statuses = {topic(gw, t).status_code for t in refused for _ in range(3)}  # 60 GETs
        assert statuses == {429}
        time.sleep(2.5)  # several refresh intervals
        view = popular(gw)
    assert len(view["refresh"]["slots"]) >= 2  # the refresher did run
    counted = {row["topic"] for row in view["topics"]}
    assert not counted & set(refused)
    assert view["refresh"]["last"]["topics"] == {}
    assert generations(simulator, model) == 1  # only the first topic, never the refused ones


def test_topic_cache_hits_and_304s_count_against_no_limit(tmp_path: Path, simulator: Simulator) -> None:
    env = {**ANON, "KNOWCTL_USER_LIMITS": "2/minute"}
    gw, proc = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    with proc:
        cached = name("cached")
        first = topic(gw, cached)
        assert first.status_code == 200 and first.headers["x-knowctl-cache"] == "MISS"
        assert "ratelimit" in first.headers  # a generation counts
        for _ in range(5):
            hit = topic(gw, cached)
            assert hit.status_code == 200 and hit.headers["x-knowctl-cache"] == "HIT-L1"
            assert "ratelimit" not in hit.headers
        not_modified = topic(gw, cached, **{"if-none-match": first.headers["etag"]})
        assert not_modified.status_code == 304
        assert topic(gw, name("second")).status_code == 200  # the second unit of the minute
        over = topic(gw, name("third"))
        assert over.status_code == 429 and over.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert topic(gw, cached).status_code == 200  # reading stays open over the limit
        ranking = {row["topic"]: row["requests"] for row in popular(gw)["topics"]}
    assert ranking[cached] == 8  # the MISS, five hits, the 304 and the last read


def test_refresh_leaves_alone_a_popular_topic_no_longer_cached(tmp_path: Path, simulator: Simulator) -> None:
    model = model_name()
    env = {
        **ANON,
        "KNOWCTL_USER_LIMITS": "none",
        "KNOWCTL_TOPICS_MODEL": model,
        "KNOWCTL_TOPICS_POPULAR_THRESHOLD": "2",
        "KNOWCTL_TOPICS_REFRESH_INTERVAL": "0.5",
    }
    gw, proc = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    with proc:
        hot = name("hot")
        assert [topic(gw, hot).status_code for _ in range(3)] == [200] * 3
        gone = admin(gw, "POST", "/api/cache/invalidate", json={"pattern": f"topic:{hot}:*", "limit": 0})
        assert gone.status_code == 200 and gone.json()["deleted"] == 1
        time.sleep(2.5)
        view = popular(gw)
        assert {row["topic"]: row["popular"] for row in view["topics"]}[hot]
        assert len(view["refresh"]["slots"]) >= 2
        assert generations(simulator, model) == 1  # the refresh did not bring it back
        again = topic(gw, hot)  # the next allowed request does
        assert again.status_code == 200 and again.headers["x-knowctl-cache"] == "MISS"
    assert generations(simulator, model) == 2


# --- keys mode: only a gateway key makes a MISS generate -------------------------------------------------


def test_keys_mode_generates_only_for_a_key_and_serves_the_cache_to_anyone(
    tmp_path: Path, simulator: Simulator, redis_url: str
) -> None:
    model = model_name()
    env = keys_env(KNOWCTL_TOPICS_MODEL=model)  # KNOWCTL_TOPICS_GENERATE unset: keys
    a, proc_a = start_gateway(tmp_path, "--upstream", simulator.url, "--store", redis_url, env=env)
    b, proc_b = start_gateway(tmp_path, "--upstream", simulator.url, "--store", redis_url, env=env)
    with proc_a, proc_b:
        key = new_key(a)
        wanted = name("wanted")
        assert_not_available(topic(a, wanted))  # no key: not generated
        assert "gateway key" in topic(a, wanted).json()["error"]["message"]
        assert generations(simulator, model) == 0
        wrong = topic(a, wanted, **{"x-goog-api-key": key + "x"})
        assert wrong.status_code == 401 and wrong.json()["error"]["status"] == "UNAUTHENTICATED"
        assert generations(simulator, model) == 0

        made = topic(a, wanted, **{"x-goog-api-key": key})
        assert made.status_code == 200 and made.headers["x-knowctl-cache"] == "MISS"
        assert made.json()["topic"] == wanted and made.json()["text"]
        assert generations(simulator, model) == 1

        anonymous = topic(a, wanted)
        assert anonymous.status_code == 200 and anonymous.headers["x-knowctl-cache"] == "HIT-L1"
        assert anonymous.content == made.content and anonymous.headers["etag"] == made.headers["etag"]
        other_daemon = topic(b, wanted)  # from the shared store, then from its own memory
        assert other_daemon.status_code == 200 and other_daemon.headers["x-knowctl-cache"] == "HIT-L2"
        assert topic(b, wanted).headers["x-knowctl-cache"] == "HIT-L1"
        not_modified = topic(b, wanted, **{"if-none-match": made.headers["etag"]})
        assert not_modified.status_code == 304

        bearer = name("bearer")  # the other place the SDKs put a key
        assert topic(b, bearer, authorization=f"Bearer {key}").status_code == 200
        assert generations(simulator, model) == 2
        time.sleep(1.5)  # each daemon adds its counts to the shared tally once a second
        ranking = {row["topic"]: row["requests"] for row in popular(a)["topics"]}
    assert ranking[wanted] == 5  # the keyed MISS and four reads; no 404 or 401 counted


def test_keys_mode_lets_anyone_generate_the_allowed_topics(tmp_path: Path, simulator: Simulator) -> None:
    model = model_name()
    listed = name("listed")
    env = keys_env(KNOWCTL_TOPICS_MODEL=model, KNOWCTL_TOPICS_ALLOWED=f"{listed},other")
    gw, proc = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    with proc:
        assert topic(gw, listed).status_code == 200
        assert_not_available(topic(gw, name("unlisted")))
    assert generations(simulator, model) == 1


# --- allowlist and none ----------------------------------------------------------------------------------


def test_allowlist_generates_only_the_listed_topics_for_anyone(tmp_path: Path, simulator: Simulator) -> None:
    model = model_name()
    listed, prewarmed = name("listed"), name("prewarmed")
    env = keys_env(
        KNOWCTL_TOPICS_MODEL=model,
        KNOWCTL_TOPICS_GENERATE="allowlist",
        KNOWCTL_TOPICS_ALLOWED=f" {listed} , tides",
    )
    gw, proc = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    with proc:
        key = new_key(gw)
        assert topic(gw, listed).status_code == 200  # no key needed for a listed topic
        unlisted = name("unlisted")
        for headers in ({}, {"x-goog-api-key": key}):  # not even with a key
            response = topic(gw, unlisted, **headers)
            assert_not_available(response)
            assert "not one of this gateway's topics" in response.json()["error"]["message"]
        assert generations(simulator, model) == 1
        warmed = admin(gw, "POST", "/api/topics/prewarm", json={"topics": [prewarmed]})
        assert warmed.json()["summary"]["generated"] == 1
        served = topic(gw, prewarmed)  # what the operator generated is public
        assert served.status_code == 200 and served.headers["x-knowctl-cache"] == "HIT-L1"
        assert listed.upper() != listed and topic(gw, listed.upper()).status_code == 404  # exact names
    assert generations(simulator, model) == 2


def test_none_serves_only_what_was_generated_ahead_of_time(tmp_path: Path, simulator: Simulator) -> None:
    env = {**ANON, "KNOWCTL_TOPICS_GENERATE": "none", "KNOWCTL_USER_LIMITS": "none"}
    gw, proc = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    with proc:
        ahead = name("ahead")
        assert_not_available(topic(gw, ahead))
        assert simulator.stats()["served"] == 0
        assert (
            httpx.post(f"{gw.url}/api/topics/prewarm", json={"topics": [ahead]}, timeout=30).status_code
            == 200
        )
        assert topic(gw, ahead).status_code == 200
    assert simulator.stats()["served"] == 1


# --- names and settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["keys", "anyone"])
def test_bad_topic_names_are_a_400_and_neither_counted_nor_generated(
    tmp_path: Path, simulator: Simulator, mode: str
) -> None:
    env = keys_env(KNOWCTL_TOPICS_GENERATE=mode, KNOWCTL_USER_LIMITS="none")
    gw, proc = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    with proc:
        key = new_key(gw)
        for bad in ("a%20b", "-x", "x" * 101, "a*b", "a%2Fb", "%C3%A9t%C3%A9", "", "a%00b", "a%0Ab"):
            response = topic(gw, bad, **{"x-goog-api-key": key})
            assert response.status_code == 400, bad
            error = response.json()["error"]
            assert error["status"] == "INVALID_ARGUMENT" and "invalid topic name" in error["message"]
        assert popular(gw)["topics"] == []
    assert simulator.stats()["served"] == 0


def serve_refused(tmp_path: Path, **env: str) -> str:
    """The output of a ``knowctl serve`` that must refuse to start."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KNOWCTL_")}
    upstream = f"http://{LOOPBACK}:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "knowctl", "serve", "--port", "0", "--upstream", upstream],
        env={**clean, "KNOWCTL_LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    return done.stdout + done.stderr


def test_settings_that_cannot_work_refuse_to_start(tmp_path: Path) -> None:
    out = serve_refused(tmp_path, KNOWCTL_TOPICS_GENERATE="allowlist", KNOWCTL_TOPICS_ALLOWED="ok,a b")
    assert "topics_allowed" in out and "invalid topic name 'a b'" in out
    out = serve_refused(tmp_path, KNOWCTL_AUTH_MODE="anonymous", KNOWCTL_TOPICS_GENERATE="keys")
    assert "KNOWCTL_TOPICS_GENERATE=keys needs gateway keys" in out
    out = serve_refused(tmp_path, KNOWCTL_AUTH_MODE="anonymous", KNOWCTL_TOPICS_GENERATE="allowlist")
    assert "needs topic names in KNOWCTL_TOPICS_ALLOWED" in out


def test_allowed_topics_come_comma_separated_or_as_a_config_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from knowctl.settings import load_settings

    config = tmp_path / "knowctl.yaml"
    config.write_text("topics_generate: allowlist\ntopics_allowed: [photosynthesis, tides, tides]\n")
    from_file = load_settings(config)
    assert from_file.topics_allowed == ["photosynthesis", "tides"]
    assert from_file.resolved_topics_generate("keys") == "allowlist"
    monkeypatch.setenv("KNOWCTL_TOPICS_ALLOWED", " volcanoes, ,tides.2 ")
    assert load_settings(config).topics_allowed == ["volcanoes", "tides.2"]  # the environment wins
    defaults = load_settings()
    assert [defaults.resolved_topics_generate(mode) for mode in ("keys", "passthrough", "anonymous")] == [
        "keys",
        "anyone",
        "anyone",
    ]
    config.write_text("topics_allowed: ['-bad']\n")
    monkeypatch.delenv("KNOWCTL_TOPICS_ALLOWED")
    with pytest.raises(ValueError, match="invalid topic name"):
        load_settings(config)
