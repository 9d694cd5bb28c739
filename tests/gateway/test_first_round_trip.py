"""A generation call's first store round trip takes things before the pipeline knows it needs
them: the caller's limit check, the cache lookup with its coalescing lease, and the provider
quota's reservation leave together. Every call that turns out not to need them gives them
back: an L2 hit and a coalesced follower their reservation, a caller refused by its own
limits its reservation and its lease. Real gateway processes, a real Redis, a recording
upstream; the quota's own stats say what stays reserved."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.fixtures import start_gateway
from tests.support.recorder import Recorder, recording_upstream


def prompt() -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": uuid.uuid4().hex}]}]}


@dataclass
class Daemon:
    url: str
    model: str  # a model of its own: other tests' calls on the shared Redis do not count here
    upstream: Recorder

    def generate(self, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1beta/models/{self.model}:generateContent", json=body, headers=headers, timeout=30
        )

    def quota(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/api/quota/stats", params={"model": self.model}, timeout=10)
        answer.raise_for_status()
        model: dict[str, Any] = answer.json()["models"][self.model]
        return model

    def rpm_used(self, expected: int) -> int:
        """The RPM window's usage once the background give-backs are done (or after 5 s)."""
        deadline = time.monotonic() + 5
        while True:
            used = int(self.quota()["windows"]["rpm"]["used"])
            if used == expected or time.monotonic() > deadline:
                return used
            time.sleep(0.05)


@contextmanager
def daemon(redis_url: str, tmp_path: Path, *, delay_s: float = 0.0, **env: str) -> Iterator[Daemon]:
    with recording_upstream(delay_s) as upstream:
        handle, process = start_gateway(
            tmp_path,
            "--upstream",
            upstream.url,
            "--store",
            redis_url,
            env={
                "KNOWCTL_AUTH_MODE": "anonymous",
                "KNOWCTL_TRUSTED_PROXIES": "127.0.0.1",  # X-Forwarded-For names the caller
                "KNOWCTL_USER_LIMITS": "100000/minute",
                "KNOWCTL_QUOTA_RPM": "100000",
                **env,
            },
        )
        with process:
            yield Daemon(handle.url, f"early-{uuid.uuid4().hex[:8]}", upstream)


def test_an_l2_hit_gives_its_reservation_back(redis_url: str, tmp_path: Path) -> None:
    # No L1: every repeat of the prompt is answered from the shared store.
    with daemon(redis_url, tmp_path, KNOWCTL_CACHE_L1_MAX_ENTRIES="0") as d:
        body = prompt()
        assert d.generate(body).headers["x-knowctl-cache"] == "MISS"
        for _ in range(5):
            assert d.generate(body).headers["x-knowctl-cache"] == "HIT-L2"
        assert len(d.upstream.requests) == 1
        assert d.rpm_used(1) == 1
        assert d.quota()["counts"]["admitted"] == 1


def test_a_caller_refused_by_its_own_limits_gives_its_reservation_back(
    redis_url: str, tmp_path: Path
) -> None:
    with daemon(redis_url, tmp_path, KNOWCTL_USER_LIMITS="1/minute") as d:
        caller = {"x-forwarded-for": "198.51.100.9"}
        assert d.generate(prompt(), **caller).status_code == 200
        for _ in range(3):
            assert d.generate(prompt(), **caller).status_code == 429
        assert len(d.upstream.requests) == 1
        assert d.rpm_used(1) == 1
        assert d.quota()["counts"]["admitted"] == 1


def test_coalesced_followers_give_their_reservations_back(redis_url: str, tmp_path: Path) -> None:
    # A slow upstream: the identical calls arrive while the first is still out.
    with daemon(redis_url, tmp_path, delay_s=0.5) as d:
        body = prompt()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: d.generate(body), range(4)))
        assert all(a.status_code == 200 for a in answers)
        labels = sorted(a.headers["x-knowctl-cache"] for a in answers)
        assert labels.count("MISS") == 1, labels
        assert len(d.upstream.requests) == 1
        assert d.rpm_used(1) == 1
        assert d.quota()["counts"]["admitted"] == 1


def test_a_refused_callers_coalescing_lease_is_given_back_at_once(redis_url: str, tmp_path: Path) -> None:
    """A refused caller may have taken the lease of its prompt: it must go back at once, or
    the next caller of that prompt would wait for coalesce_timeout."""
    with daemon(redis_url, tmp_path, KNOWCTL_USER_LIMITS="1/minute", KNOWCTL_COALESCE_TIMEOUT="20") as d:
        noisy, other = {"x-forwarded-for": "198.51.100.7"}, {"x-forwarded-for": "198.51.100.8"}
        body = prompt()
        assert d.generate(prompt(), **noisy).status_code == 200
        assert d.generate(body, **noisy).status_code == 429
        started = time.monotonic()
        answer = d.generate(body, **other)
        waited = time.monotonic() - started
    assert answer.status_code == 200 and answer.headers["x-knowctl-cache"] == "MISS"
    assert waited < 5, f"waited {waited:.1f}s for a lease nobody held any more"
