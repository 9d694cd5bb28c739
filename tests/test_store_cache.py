"""The cache section of the store (leases, scans, unlinks, tallies), against memory and Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from knowctl.store import Store, keys, open_store
from knowctl.store.base import check_match

pytestmark = pytest.mark.anyio

TIMEOUT = 2.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = open_store(store_url, timeout=TIMEOUT)
    yield s
    await s.close()


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
