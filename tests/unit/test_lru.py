"""The in-process LRU layer: entries and bytes bounds, TTL with an injected clock, eviction counts."""

from __future__ import annotations

from knowctl.daemon.lru import LRU


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_get_put_and_ttl() -> None:
    clock = Clock()
    lru: LRU[str] = LRU(10, 1000, clock=clock)
    assert lru.put("a", "A", 10, ttl=5)
    assert lru.get("a") == "A"
    clock.now += 5
    assert lru.get("a") is None
    assert lru.peek("a") == "A"  # still there for stale use, until evicted
    assert lru.evictions == 0


def test_evicts_least_recently_used_by_count() -> None:
    lru: LRU[int] = LRU(3, 10_000, clock=Clock())
    for i in range(3):
        lru.put(f"k{i}", i, 1, ttl=60)
    assert lru.get("k0") == 0  # k1 is now the oldest
    lru.put("k3", 3, 1, ttl=60)
    assert list(lru) == ["k2", "k0", "k3"]
    assert "k1" not in lru
    assert lru.evictions == 1


def test_evicts_by_bytes() -> None:
    lru: LRU[str] = LRU(100, 100, clock=Clock())
    lru.put("a", "A", 40, ttl=60)
    lru.put("b", "B", 40, ttl=60)
    lru.put("c", "C", 40, ttl=60)
    assert "a" not in lru and lru.bytes == 80
    assert lru.evictions == 1
    assert not lru.put("huge", "H", 101, ttl=60)  # never fits
    assert "huge" not in lru and lru.bytes == 80


def test_replacing_a_key_keeps_bytes_exact() -> None:
    lru: LRU[str] = LRU(10, 100, clock=Clock())
    lru.put("a", "A", 40, ttl=60)
    lru.put("a", "A2", 10, ttl=60)
    assert lru.bytes == 10 and len(lru) == 1 and lru.get("a") == "A2"


def test_drop_and_clear() -> None:
    lru: LRU[int] = LRU(10, 100, clock=Clock())
    for i in range(5):
        lru.put(f"topic:{i}:x", i, 2, ttl=60)
    assert lru.drop(lambda k: k.startswith("topic:1") or k.startswith("topic:2")) == 2
    assert len(lru) == 3 and lru.bytes == 6
    lru.clear()
    assert len(lru) == 0 and lru.bytes == 0


def test_zero_bounds_turn_the_layer_off() -> None:
    assert not LRU[int](0, 100, clock=Clock()).put("a", 1, 1, ttl=60)
    assert not LRU[int](10, 0, clock=Clock()).put("a", 1, 1, ttl=60)
    assert not LRU[int](10, 10, clock=Clock()).put("a", 1, 1, ttl=0)
