"""The cache section of the store (leases, scans, unlinks, tallies), against memory and Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from knowctl.store import Store, keys
from knowctl.store.base import check_match

pytestmark = pytest.mark.anyio

TIMEOUT = 2.0


def rid() -> str:
    return uuid.uuid4().hex


async def test_set_if_absent_and_delete_if_equal(store: Store) -> None:
    lease = keys.cache_lease(f"gen:m:{rid()}")
    assert await store.set_if_absent(lease, b"me", ttl=30)
    assert not await store.set_if_absent(lease, b"you", ttl=30)
    assert await store.get(lease) == b"me"
    assert not await store.delete_if_equal(lease, b"you")
    assert await store.delete_if_equal(lease, b"me")
    assert await store.get(lease) is None
    assert await store.set_if_absent(lease, b"you", ttl=0.2)
    await asyncio.sleep(0.35)
    assert await store.set_if_absent(lease, b"again", ttl=30)  # the first lease expired
    await store.delete(lease)


async def test_scan_and_unlink(store: Store) -> None:
    tag = rid()[:10]
    names = [keys.cache_entry(f"topic:t{tag}{i % 3}:{i:04x}") for i in range(30)]
    for name in names:
        await store.set(name, b"v", ttl=30)
    found: set[str] = set()
    cursor = 0
    while True:
        cursor, batch = await store.scan_keys(keys.cache_entries_match(f"topic:t{tag}1:*"), cursor, count=7)
        found.update(batch)
        if cursor == 0:
            break
    assert found == {n for i, n in enumerate(names) if i % 3 == 1}
    assert {keys.cache_key_of(n) for n in found} == {
        f"topic:t{tag}1:{i:04x}" for i in range(30) if i % 3 == 1
    }
    assert await store.unlink(*found) == 10
    assert await store.unlink(*found) == 0
    assert await store.unlink() == 0
    assert await store.get(names[1]) is None and await store.get(names[0]) == b"v"
    await store.unlink(*names)


async def test_scan_refuses_glob_syntax_it_cannot_match_alike(store: Store) -> None:
    for bad in ("knowctl:{c:[ab]*}:v", "knowctl:{c:\\*}:v", "knowctl:^x"):
        with pytest.raises(ValueError):
            await store.scan_keys(bad)
    with pytest.raises(ValueError):
        await store.scan_keys("not-our-prefix:*")
    assert check_match("knowctl:{c:topic:*}:v") == "knowctl:{c:topic:*}:v"


async def test_tallies(store: Store) -> None:
    tally = keys.topic_tally(int(rid()[:8], 16))
    assert await store.tally_top(tally, 10) == []
    await store.tally_add(tally, {"a": 2, "b": 5}, ttl=30)
    await store.tally_add(tally, {"a": 4, "c": 1}, ttl=30)
    assert await store.tally_top(tally, 10) == [("a", 6), ("b", 5), ("c", 1)]
    assert await store.tally_top(tally, 1) == [("a", 6)]
    assert await store.tally_top(tally, 0) == []
    await store.tally_add(tally, {}, ttl=30)
    short = keys.topic_tally(int(rid()[:8], 16))
    await store.tally_add(short, {"x": 1}, ttl=0.2)
    await asyncio.sleep(0.35)
    assert await store.tally_top(short, 10) == []
    await store.delete(tally)


async def test_read_or_lease_reads_fresh_entries_and_leases_the_rest(store: Store) -> None:
    k = f"gen:m:{rid()}"
    entry, lease, watch = keys.cache_entry(k), keys.cache_lease(k), keys.cache_watch(k)
    got = await store.read_or_lease(entry, lease, watch, b"a", lease_ttl=30, stale_ttl=10)
    assert (got.value, got.fresh, got.leased) == (None, False, True)  # absent: leased
    got = await store.read_or_lease(entry, lease, watch, b"b", lease_ttl=30, stale_ttl=10)
    assert (got.value, got.fresh, got.leased) == (None, False, False)  # held by "a": watched
    assert await store.get(watch) == b"1"
    await store.set(entry, b"v", ttl=60)  # 50 s fresh, then 10 s stale
    got = await store.read_or_lease(entry, lease, watch, b"b", lease_ttl=30, stale_ttl=10)
    assert (got.value, got.fresh, got.leased) == (b"v", True, False)
    got = await store.read_or_lease(entry, lease, watch, b"b", lease_ttl=30, stale_ttl=None)
    assert (got.value, got.fresh, got.leased) == (b"v", False, False)  # never fresh: still held
    await store.set(entry, b"old", ttl=5)  # only its stale part is left
    assert await store.delete_if_equal(lease, b"a")
    got = await store.read_or_lease(entry, lease, watch, b"c", lease_ttl=30, stale_ttl=10)
    assert (got.value, got.fresh, got.leased) == (b"old", False, True)
    await store.unlink(entry, lease, watch)


async def test_finish_lease_stores_releases_and_publishes_only_when_watched(store: Store) -> None:
    k = f"gen:m:{rid()}"
    entry, lease, watch = keys.cache_entry(k), keys.cache_lease(k), keys.cache_watch(k)
    channel = keys.cache_channel()
    async with store.subscribe(channel) as sub:
        assert (await store.read_or_lease(entry, lease, watch, b"me", 30, 10)).leased
        # Nobody watches: stored and released, nothing sent.
        assert await store.finish_lease(
            lease, watch, b"me", channel, b"quiet", entry=entry, value=b"v", ttl=60
        )
        assert await store.get(entry) == b"v" and await store.get(lease) is None
        # Someone watches: the message goes out once, and the watch is gone.
        assert (await store.read_or_lease(entry, lease, watch, b"me", 30, None)).leased
        assert not (await store.read_or_lease(entry, lease, watch, b"other", 30, None)).leased
        assert not await store.finish_lease(lease, watch, b"other", channel, b"not yours")  # published
        assert await store.get(lease) == b"me"
        assert await store.finish_lease(lease, watch, b"me", channel, b"done")  # nobody watches now
        assert await asyncio.wait_for(sub.__anext__(), 5) == b"not yours"
        await store.read_or_lease(entry, lease, watch, b"x", 30, None)
        await store.read_or_lease(entry, lease, watch, b"y", 30, None)
        assert await store.finish_lease(lease, watch, b"x", channel, b"news")
        assert await asyncio.wait_for(sub.__anext__(), 5) == b"news"
        assert await store.get(watch) is None and await store.get(lease) is None
    await store.unlink(entry)


async def test_memory_store_keeps_plain_values_within_max_bytes() -> None:
    from knowctl.store.memory import MemoryStore

    store = MemoryStore("memory://?max_bytes=20000")
    names = [keys.cache_entry(f"gen:m:{i:04x}") for i in range(100)]
    for i, name in enumerate(names):
        await store.set(name, bytes(1000), ttl=3600)
        if i == 5:
            assert await store.get(names[0]) is not None  # recently used: kept the longest
    assert store.bytes <= store.max_bytes and store.evictions > 70
    assert await store.get(names[-1]) is not None  # the newest stay
    assert await store.get(names[1]) is None  # the least recently used went first
    await store.close()
    with pytest.raises(ValueError):
        MemoryStore("memory://?max_bytes=lots")
