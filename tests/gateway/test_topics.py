"""The topic API end to end: headers, ETag/304, popular refresh with two daemons, prewarm CLI,
CDN purge hook against a local stand-in server."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cli import run_knowctl
from tests.support.fixtures import Gateway, Simulator, start_gateway
from tests.support.net import LOOPBACK

ANON = {"KNOWCTL_AUTH_MODE": "anonymous", "KNOWCTL_USER_LIMITS": "none"}


def name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def gateway_one(tmp_path: Path, simulator: Simulator) -> Iterator[Gateway]:
    gw, proc = start_gateway(tmp_path, "--upstream", simulator.url, env=ANON)
    with proc:
        yield gw


def test_topic_headers_etag_and_304(gateway_one: Gateway, simulator: Simulator) -> None:
    topic = name("photosynthesis")
    first = httpx.get(f"{gateway_one.url}/topics/{topic}", timeout=30)
    assert first.status_code == 200, first.text
    doc = first.json()
    assert doc["topic"] == topic and doc["text"] and doc["model"] == "gemini-2.5-flash"
    h = first.headers
    assert h["cache-control"] == "public, max-age=300"
    assert h["cdn-cache-control"] == "max-age=1800"
    assert h["surrogate-control"] == "max-age=1800"
    assert h["vary"] == "Accept-Encoding"
    assert h["x-knowctl-cache"] == "MISS"
    etag = h["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")

    again = httpx.get(f"{gateway_one.url}/topics/{topic}", timeout=30)
    assert again.headers["etag"] == etag and again.content == first.content
    assert again.headers["x-knowctl-cache"] == "HIT-L1"

    not_modified = httpx.get(f"{gateway_one.url}/topics/{topic}", headers={"if-none-match": etag}, timeout=30)
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag and "max-age=300" in not_modified.headers["cache-control"]
    weak = httpx.get(
        f"{gateway_one.url}/topics/{topic}", headers={"if-none-match": f'"x", W/{etag}'}, timeout=30
    )
    assert weak.status_code == 304
    other = httpx.get(f"{gateway_one.url}/topics/{topic}", headers={"if-none-match": '"nope"'}, timeout=30)
    assert other.status_code == 200
    assert simulator.stats()["served"] == 1

    head = httpx.head(f"{gateway_one.url}/topics/{topic}", timeout=30)
    assert head.status_code == 200 and head.headers["etag"] == etag and head.content == b""


@pytest.mark.parametrize("bad", ["a%20b", "-x", "x" * 101, "a*b", "%C3%A9t%C3%A9"])
def test_invalid_topic_names_are_a_clear_400(gateway_one: Gateway, bad: str) -> None:
    response = httpx.get(f"{gateway_one.url}/topics/{bad}", timeout=10)
    assert response.status_code == 400
    assert "invalid topic name" in response.json()["error"]["message"]
    assert httpx.post(f"{gateway_one.url}/topics/ok", timeout=10).status_code == 405


def test_prewarm_cli_reports_generated_fresh_and_failed(
    gateway_one: Gateway, simulator: Simulator, tmp_path: Path
) -> None:
    env = {"KNOWCTL_URL": gateway_one.url}
    a, b, c = name("a"), name("b"), name("c")
    listing = tmp_path / "topics.txt"
    listing.write_text(f"# topics\n{b}\n\n{c}\n")
    first = run_knowctl("topics", "prewarm", a, "--from-file", str(listing), "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["summary"] == {"generated": 3, "fresh": 0, "failed": 0}

    simulator.configure(fault="error500", count=1)
    d = name("d")
    second = run_knowctl("topics", "prewarm", a, b, d, "--json", env=env)
    assert second.returncode == 1
    report = json.loads(second.stdout)
    assert report["summary"] == {"generated": 0, "fresh": 2, "failed": 1}
    failed = [r for r in report["results"] if r["status"] == "failed"]
    assert failed[0]["topic"] == d and "500" in failed[0]["error"]

    table = run_knowctl("topics", "prewarm", a, d, env=env)
    assert table.returncode == 0, table.stderr
    assert "already fresh" in table.stdout and "Generated 1, already fresh 1, failed 0" in table.stdout
    # the prewarmed topic is served from cache
    served = simulator.stats()["served"]
    assert httpx.get(f"{gateway_one.url}/topics/{a}", timeout=30).headers["x-knowctl-cache"] == "HIT-L1"
    assert simulator.stats()["served"] == served
    bad = run_knowctl("topics", "prewarm", "no spaces", env=env)
    assert bad.returncode == 2


def test_popular_refresh_runs_once_per_interval_with_two_daemons(
    tmp_path: Path, simulator: Simulator, redis_url: str
) -> None:
    model = "gemini-2.0-flash"  # only this test's generations are counted under it
    env = {
        **ANON,
        "KNOWCTL_STORE_URL": redis_url.rsplit("/", 1)[0] + "/5",  # a database of its own
        "KNOWCTL_TOPICS_MODEL": model,
        "KNOWCTL_TOPICS_REFRESH_INTERVAL": "1",
        "KNOWCTL_TOPICS_POPULAR_THRESHOLD": "3",
        "KNOWCTL_TOPICS_REFRESH_FRACTION": "0.5",
        "KNOWCTL_CACHE_L2_TTL": "1.5",  # due for refresh 0.75 s after each generation
        "KNOWCTL_CACHE_L1_TTL": "1.5",
    }
    a, proc_a = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    b, proc_b = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    with proc_a, proc_b:
        hot, cold = name("hot"), name("cold")
        for i in range(4):
            assert httpx.get(f"{(a, b)[i % 2].url}/topics/{hot}", timeout=30).status_code == 200
        assert httpx.get(f"{a.url}/topics/{cold}", timeout=30).status_code == 200
        time.sleep(5.5)
        views = [httpx.get(f"{gw.url}/api/topics/popular", timeout=10).json() for gw in (a, b)]
    slots = [set(v["refresh"]["slots"]) for v in views]
    assert not slots[0] & slots[1], slots  # never the same interval twice
    ran = sorted(slots[0] | slots[1])
    assert len(ran) >= 3 and ran == list(range(ran[0], ran[0] + len(ran))), ran  # one run per interval
    ranking = {row["topic"]: row for row in views[0]["topics"]}
    assert ranking[hot]["requests"] == 4 and ranking[hot]["popular"]
    assert not ranking[cold]["popular"]
    refreshed = [v["refresh"]["last"].get("topics", {}) for v in views]
    assert any(r.get(hot) == "generated" for r in refreshed)
    assert all(cold not in r for r in refreshed)
    generations = simulator.stats()["by_model"][model]
    assert 2 + 1 <= generations <= 2 + len(ran) + 1  # hot and cold once, hot again per interval (at most)


class _PurgeRecorder(BaseHTTPRequestHandler):
    calls: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        type(self).calls.append(
            {
                "path": self.path,
                "auth": self.headers.get("authorization"),
                "body": json.loads(self.rfile.read(length)),
            }
        )
        payload = b'{"success": true, "errors": [], "messages": [], "result": {"id": "zone"}}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def purge_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    _PurgeRecorder.calls = []
    server = ThreadingHTTPServer((LOOPBACK, 0), _PurgeRecorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}/client/v4", _PurgeRecorder.calls
    finally:
        server.shutdown()
        server.server_close()


def test_cdn_purge_hook_gets_the_topic_urls(
    tmp_path: Path, simulator: Simulator, purge_server: tuple[str, list[dict[str, Any]]]
) -> None:
    purge_url, calls = purge_server
    env = {
        **ANON,
        "KNOWCTL_CDN_PURGE_URL": purge_url,
        "KNOWCTL_CDN_ZONE_ID": "zone123",
        "KNOWCTL_CDN_API_TOKEN": "cdn-secret-token",
        "KNOWCTL_PUBLIC_BASE_URL": "https://gw.example.com/",
        "KNOWCTL_TOPICS_PUBLIC": "false",
    }
    gw, proc = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    with proc:
        one, two, keep = name("one"), name("two"), name("keep")
        for topic in (one, two, keep):
            response = httpx.get(f"{gw.url}/topics/{topic}", timeout=30)
            assert response.status_code == 200
            assert response.headers["cache-control"] == "private, max-age=300"
            assert "cdn-cache-control" not in response.headers
        prefix = one.split("-")[0]
        done = httpx.post(
            f"{gw.url}/api/cache/invalidate", json={"pattern": f"topic:{prefix}-*", "limit": 0}, timeout=30
        )
        assert done.status_code == 200 and done.json()["deleted"] == 1
        assert calls[-1]["path"] == "/client/v4/zones/zone123/purge_cache"
        assert calls[-1]["auth"] == "Bearer cdn-secret-token"
        assert calls[-1]["body"] == {"files": [f"https://gw.example.com/topics/{one}"]}
        forced = httpx.post(f"{gw.url}/api/topics/prewarm", json={"topics": [two], "force": True}, timeout=30)
        assert forced.json()["results"] == [{"topic": two, "status": "generated"}]
        assert calls[-1]["body"] == {"files": [f"https://gw.example.com/topics/{two}"]}
        assert len(calls) == 2
        assert "cdn-secret-token" not in gw.log_text()
