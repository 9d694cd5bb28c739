"""AnswerCache in-process, against memory:// and a real Redis: layers, TTLs, stale copies,
what is never stored, coalescing (one daemon and two), invalidation (up to 100k keys)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis

from knowctl.daemon.cache import blobs
from knowctl.daemon.cache.answers import AnswerCache
from knowctl.daemon.config import cache_config
from knowctl.daemon.contracts import Answer
from knowctl.settings import Settings
from knowctl.store import Store, keys, open_store
from knowctl.store.memory import MemoryStore
from tests.support.net import LOOPBACK, free_port

pytestmark = pytest.mark.anyio

TIMEOUT = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def chunk(text: str, finish: str | None = "STOP", **extra: Any) -> bytes:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
    if finish:
        candidate["finishReason"] = finish
    return orjson.dumps({"candidates": [candidate], **extra})


OK = Answer((chunk("hello"),), "gemini-2.5-flash")
STREAMED = Answer(
    (chunk("hel", None), chunk("lo", None), chunk("", "STOP", usageMetadata={"totalTokenCount": 3}))
)


def key() -> str:
    return f"topic:t{uuid.uuid4().hex[:12]}:{uuid.uuid4().hex}"


def make_settings(**kw: Any) -> Settings:
    return Settings(**{"coalesce_timeout": 10.0, **kw})


class Daemons:
    """AnswerCache instances sharing one store URL, like daemons (memory://: one process)."""

    def __init__(self, url: str, clock: Clock) -> None:
        self.url = url
        self.clock = clock
        self.stores: list[Store] = []
        self.caches: list[AnswerCache] = []
        self._memory: MemoryStore | None = None

    async def new(self, **kw: Any) -> AnswerCache:
        if self.url.startswith("memory"):
            if self._memory is None:
                self._memory = MemoryStore(clock=self.clock)
                self.stores.append(self._memory)
            store: Store = self._memory
        else:
            store = open_store(self.url, timeout=TIMEOUT)
            self.stores.append(store)
        cache = AnswerCache(cache_config(make_settings(**kw)), store, clock=self.clock)
        await cache.start()
        self.caches.append(cache)
        return cache

    async def close(self) -> None:
        for cache in self.caches:
            await cache.close()
        for store in self.stores:
            await store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def daemons(store_url: str, clock: Clock) -> AsyncIterator[Daemons]:
    d = Daemons(store_url, clock)
    yield d
    await d.close()


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- layers ---------------------------------------------------------------------------------------


async def test_miss_then_l1_hit_then_l2_hit_on_another_daemon_promoted(
    daemons: Daemons, clock: Clock
) -> None:
    a, b = await daemons.new(), await daemons.new()
    k = key()
    assert (await a.lookup(k)).cached is None
    await a.save(k, OK)
    hit = (await a.lookup(k)).cached
    assert hit is not None and hit.layer == "L1" and hit.answer == OK and hit.age_s == 0
    clock.now += 5
    first = (await b.lookup(k)).cached
    assert (
        first is not None and first.layer == "L2" and first.answer == OK and first.age_s == pytest.approx(5)
    )
    second = (await b.lookup(k)).cached
    assert second is not None and second.layer == "L1"  # promoted
    assert b.stats()["layers"]["l1"]["hits"] == 1 and b.stats()["layers"]["l2"]["hits"] == 1
    assert a.stats()["layers"]["l2"]["misses"] == 1


async def test_streamed_answers_round_trip_exactly(daemons: Daemons) -> None:
    a, b = await daemons.new(), await daemons.new()
    k = key()
    await a.save(k, STREAMED)
    got = (await b.lookup(k)).cached
    assert got is not None and got.answer.chunks == STREAMED.chunks


async def test_ttl_expiry_per_layer_and_stale_copies(daemons: Daemons, clock: Clock) -> None:
    a = await daemons.new(cache_l1_ttl=10, cache_l2_ttl=100, cache_stale_ttl=50)
    k = key()
    await a.save(k, OK)
    clock.now += 11  # past L1's TTL: served from L2 (and promoted again)
    got = (await a.lookup(k)).cached
    assert got is not None and got.layer == "L2"
    clock.now += 90  # past L2's TTL: a miss, but still a stale copy
    assert (await a.lookup(k)).cached is None
    stale = await a.stale(k)
    assert stale is not None and stale.layer == "STALE" and stale.age_s == pytest.approx(101)
    clock.now += 50  # past the stale TTL too
    assert await a.stale(k) is None
    assert a.stats()["stale_served"] == 1


async def test_promotion_never_outlives_l2_freshness(daemons: Daemons, clock: Clock) -> None:
    a, b = (
        await daemons.new(cache_l1_ttl=600, cache_l2_ttl=100),
        await daemons.new(cache_l1_ttl=600, cache_l2_ttl=100),
    )
    k = key()
    await a.save(k, OK)
    clock.now += 90
    assert (await b.lookup(k)).cached is not None
    clock.now += 11  # 101 s after the save: L1 copy in b must be gone too
    assert (await b.lookup(k)).cached is None


async def test_lru_eviction_by_count_and_bytes(daemons: Daemons) -> None:
    by_count = await daemons.new(cache_l1_max_entries=2)
    ks = [key() for _ in range(3)]
    for k in ks:
        await by_count.save(k, OK)
    stats = by_count.stats()["layers"]["l1"]
    assert stats["entries"] == 2 and stats["evictions"] == 1
    got = (await by_count.lookup(ks[0])).cached
    assert got is not None and got.layer == "L2"  # evicted from L1, still in the store
    size = len(blobs.encode(OK, 0.0))
    by_bytes = await daemons.new(cache_l1_max_bytes=2 * size + 10)
    for k in ks:
        await by_bytes.save(k, OK)
    stats = by_bytes.stats()["layers"]["l1"]
    assert stats["entries"] == 2 and stats["bytes"] <= 2 * size + 10 and stats["evictions"] == 1


@pytest.mark.parametrize(
    "bad",
    [
        Answer((b'{"error": {"code": 500, "message": "x", "status": "INTERNAL"}}',)),
        Answer((orjson.dumps({"promptFeedback": {"blockReason": "SAFETY"}}),)),
        Answer((orjson.dumps({"candidates": []}),)),
        Answer((chunk("cut", None),)),  # no finishReason: a cut-off stream
        Answer((chunk("x", "SAFETY"),)),
        Answer((chunk("par", None), b'{"candidates": [{"content"')),  # broken JSON
        Answer(()),
    ],
)
async def test_failures_are_never_stored(daemons: Daemons, bad: Answer) -> None:
    a = await daemons.new()
    k = key()
    await a.save(k, bad)
    assert (await a.lookup(k)).cached is None and await a.stale(k) is None
    assert a.stats()["refused_saves"] == 1 and a.stats()["saves"] == 0


# --- coalescing -------------------------------------------------------------------------------------


async def pipeline(cache: AnswerCache, k: str, upstream: list[int], delay: float = 0.2) -> str:
    """What knowctl.daemon.pipeline.generation does with the cache, with a fake upstream call."""
    found = await cache.lookup(k)
    if found.cached is not None:
        return "hit"
    answer: Answer | None = None
    async with cache.flight(k, found.lease) as flight:
        if flight.answer is not None:
            return "coalesced"
        try:
            upstream.append(1)
            await asyncio.sleep(delay)
            answer = OK
        finally:
            await flight.publish(answer)
    if answer is not None:
        await cache.save(k, answer)
    return "miss"


async def test_concurrent_identical_misses_make_one_upstream_call(daemons: Daemons) -> None:
    a = await daemons.new()
    k = key()
    upstream: list[int] = []
    results = await asyncio.gather(*(pipeline(a, k, upstream) for _ in range(30)))
    assert len(upstream) == 1
    assert results.count("miss") == 1 and results.count("coalesced") == 29
    assert a.stats()["coalesced"] == 29


@pytest.fixture
async def redis_daemons(redis_url: str, clock: Clock) -> AsyncIterator[Daemons]:
    """Daemons on the real Redis only (memory:// is one process: one daemon by definition)."""
    d = Daemons(redis_url, clock)
    yield d
    await d.close()


async def test_concurrent_misses_across_two_daemons_make_one_upstream_call(redis_daemons: Daemons) -> None:
    a, b = await redis_daemons.new(), await redis_daemons.new()
    k = key()
    upstream: list[int] = []
    results = await asyncio.gather(*(pipeline((a, b)[i % 2], k, upstream) for i in range(40)))
    assert len(upstream) == 1, results
    assert results.count("miss") == 1
    # late arrivals after the save are plain hits
    assert await pipeline(b, k, upstream) == "hit" and len(upstream) == 1


async def test_a_miss_leaves_no_lease_and_tells_only_watching_daemons(redis_daemons: Daemons) -> None:
    a, b = await redis_daemons.new(), await redis_daemons.new()
    raw = a._store  # the BreakerStore of daemon a
    k = key()
    async with raw.subscribe(keys.cache_channel()) as sub:
        upstream: list[int] = []
        assert await pipeline(a, k, upstream, delay=0.01) == "miss"  # nobody watched: no news
        for name in (keys.cache_lease(k), keys.cache_watch(k)):
            assert await raw.get(name) is None
        k2 = key()
        results = await asyncio.gather(pipeline(a, k2, upstream, delay=0.3), pipeline(b, k2, upstream))
        assert sorted(results) == ["coalesced", "miss"] and len(upstream) == 2
        news = await asyncio.wait_for(sub.__anext__(), 5)
        assert news == b"S" + k2.encode()  # the watcher was told to read the saved entry
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sub.__anext__(), 0.3)
    for name in (keys.cache_lease(k2), keys.cache_watch(k2)):
        assert await raw.get(name) is None


async def test_a_lookup_lease_nobody_flies_with_is_given_back(redis_daemons: Daemons) -> None:
    a, b = await redis_daemons.new(), await redis_daemons.new()
    k = key()
    found = await a.lookup(k)
    assert found.cached is None and found.lease is not None  # took the lease...
    a.release(k, found.lease)  # ... but no flight follows (the caller was refused, say)
    await eventually(lambda: not a.coalescer._tasks)
    upstream: list[int] = []
    assert await pipeline(b, k, upstream, delay=0.01) == "miss"  # b leads at once
    assert len(upstream) == 1


@pytest.mark.parametrize("outcome", [OK, None], ids=["answered", "failed"])
async def test_a_flight_says_whether_entering_it_waited(daemons: Daemons, outcome: Answer | None) -> None:
    """The pipeline gives back a quota reservation made before a flight that waited (it
    would count from too early): a leader does not wait, a follower always has."""
    a = await daemons.new()
    k = key()
    found = await a.lookup(k)

    async def follow() -> tuple[bool, Answer | None]:
        async with a.flight(k) as flight:
            return flight.waited, flight.answer

    async with a.flight(k, found.lease) as leader:
        assert leader.answer is None and not leader.waited
        following = asyncio.ensure_future(follow())
        await asyncio.sleep(0.05)
        await leader.publish(outcome)
    assert await following == (True, outcome)


async def test_followers_go_upstream_when_the_leader_fails(redis_daemons: Daemons) -> None:
    a, b = await redis_daemons.new(), await redis_daemons.new()
    k = key()
    calls: list[str] = []

    async def failing_leader() -> None:
        async with a.flight(k) as flight:
            assert flight.answer is None
            calls.append("leader")
            await asyncio.sleep(0.2)
            await flight.publish(None)  # upstream failed

    async def follower(cache: AnswerCache) -> str:
        await asyncio.sleep(0.05)
        upstream: list[int] = []
        result = await pipeline(cache, k, upstream, delay=0.05)
        calls.extend("follower-upstream" for _ in upstream)
        return result

    _, *results = await asyncio.gather(failing_leader(), follower(a), follower(b))
    assert calls[0] == "leader"
    assert "miss" in results  # someone went upstream after the failure, nobody hung
    assert all(r in ("miss", "coalesced", "hit") for r in results)


# --- invalidation ------------------------------------------------------------------------------------


async def test_invalidate_dry_run_limit_and_every_daemons_l1(daemons: Daemons) -> None:
    a = await daemons.new()
    b = a if daemons.url.startswith("memory") else await daemons.new()  # memory://: one daemon
    topic = f"inv{uuid.uuid4().hex[:10]}"
    ks = [f"topic:{topic}:{i:064x}" for i in range(5)]
    other = f"topic:{topic}x:{0:064x}"
    for k in [*ks, other]:
        await a.save(k, OK)
        assert (await b.lookup(k)).cached is not None  # now in b's L1 too
    dry = await a.invalidate(f"topic:{topic}:*", dry_run=True)
    assert dry["matched"] == 5 and dry["deleted"] == 0 and dry["remaining"] == 5
    assert set(dry["sample"]) == set(ks)
    assert (await b.lookup(ks[0])).cached is not None
    limited = await a.invalidate(f"topic:{topic}:*", limit=2)
    assert (limited["matched"], limited["deleted"], limited["remaining"]) == (5, 2, 3)
    everything = await a.invalidate(f"topic:{topic}:*", limit=0)
    assert (everything["matched"], everything["deleted"], everything["remaining"]) == (3, 3, 0)
    for cache in (a, b):
        await eventually(lambda c=cache: all(k not in c._l1 for k in ks))  # type: ignore[misc]
        for k in ks:
            assert (await cache.lookup(k)).cached is None
            assert await cache.stale(k) is None  # the stale copies went too
    assert (await b.lookup(other)).cached is not None
    assert a.stats()["invalidations"] == 2 and a.stats()["invalidated_keys"] == 5


async def test_invalidation_hook_gets_the_removed_keys(daemons: Daemons) -> None:
    a = await daemons.new()
    seen: list[list[str]] = []

    async def hook(removed: list[str]) -> None:
        seen.append(removed)

    a.on_invalidate(hook)
    k = key()
    await a.save(k, OK)
    await a.invalidate(k)
    assert seen == [[k]]


async def test_invalidate_100k_keys_in_redis_without_blocking(
    redis_daemons: Daemons, redis_url: str, clock: Clock
) -> None:
    if True:
        a = await redis_daemons.new()
        topic = f"bulk{uuid.uuid4().hex[:10]}"
        blob = blobs.encode(OK, clock.now)
        raw = aredis.Redis.from_url(redis_url)
        try:
            for start in range(0, 100_000, 10_000):
                pipe = raw.pipeline(transaction=False)
                for i in range(start, start + 10_000):
                    pipe.set(keys.cache_entry(f"topic:{topic}:{i:064x}"), blob, ex=600)
                await pipe.execute()
            started = time.perf_counter()
            pings: list[float] = []

            async def probe() -> None:  # Redis keeps answering others meanwhile
                while True:
                    t = time.perf_counter()
                    await raw.ping()
                    pings.append(time.perf_counter() - t)
                    await asyncio.sleep(0.01)

            prober = asyncio.create_task(probe())
            dry = await a.invalidate(f"topic:{topic}:*", dry_run=True)
            result = await a.invalidate(f"topic:{topic}:*", limit=0)
            elapsed = time.perf_counter() - started
            prober.cancel()
            assert dry["matched"] == 100_000
            assert (result["matched"], result["deleted"], result["remaining"]) == (100_000, 100_000, 0)
            _, left = await raw.scan(0, match=keys.cache_entries_match(f"topic:{topic}:*"), count=200_000)
            assert left == []
            assert elapsed < 30, elapsed
            assert max(pings) < 0.5, max(pings)
            print(
                f"100k keys: dry run + invalidate {elapsed:.2f}s, slowest PING meanwhile {max(pings) * 1000:.1f} ms"
            )
        finally:
            await raw.aclose()


# --- store trouble ----------------------------------------------------------------------------------


async def test_store_outage_is_a_miss_never_an_error(clock: Clock) -> None:
    dead = open_store(f"redis://{LOOPBACK}:{free_port()}/0", timeout=0.2)
    cache = AnswerCache(cache_config(make_settings()), dead, clock=clock)
    await cache.start(wait_s=0.3)
    try:
        k = key()
        started = time.monotonic()
        assert (await cache.lookup(k)).cached is None
        upstream: list[int] = []
        assert await pipeline(cache, k, upstream, delay=0.01) == "miss"  # leads locally
        assert len(upstream) == 1
        got = (await cache.lookup(k)).cached
        assert got is not None and got.layer == "L1"  # L1 still works
        assert (await cache.stale(k)) is not None  # the local copy is the fallback
        assert cache.stats()["degraded"] is True
        assert time.monotonic() - started < 5
    finally:
        await cache.close()
        await dead.close()
