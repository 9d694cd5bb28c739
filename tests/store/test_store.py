"""The state backends, each test run against ``memory://`` and a real Redis (store_url)."""

from __future__ import annotations

import asyncio
import math
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis.asyncio as aredis

from knowctl.policy.windows import calendar_period
from knowctl.store import Announcement, Candidate, Claim, Store, StoreUnavailable, Window, keys, open_store
from knowctl.store.base import redact_url
from knowctl.store.memory import MemoryStore
from tests.support.net import LOOPBACK, free_port
from tests.support.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.anyio

TIMEOUT = 2.0


@pytest.fixture
async def daemons(store_url: str) -> AsyncIterator[list[Store]]:
    """Three stores on one URL, like three daemons. memory:// is one process, so one store."""
    if store_url.startswith("memory"):
        s = open_store(store_url, timeout=TIMEOUT)
        yield [s, s, s]
        await s.close()
        return
    stores = [open_store(store_url, timeout=TIMEOUT) for _ in range(3)]
    yield stores
    for s in stores:
        await s.close()


def scope() -> str:
    """A fresh scope per test: tests share the session's Redis."""
    return keys.quota_scope(f"model-{uuid.uuid4().hex[:12]}")


def rid() -> str:
    return uuid.uuid4().hex


# --- plain keys -------------------------------------------------------------------------------


async def test_get_set_delete(store: Store) -> None:
    k1, k2 = keys.cache_entry(rid()), keys.cache_entry(rid())
    assert await store.get(k1) is None
    await store.set(k1, b"\x00answer\xff", ttl=30)
    await store.set(k2, b"two", ttl=30)
    assert await store.get(k1) == b"\x00answer\xff"
    await store.set(k1, b"replaced", ttl=30)
    assert await store.get(k1) == b"replaced"
    assert await store.delete(k1, k2, keys.cache_entry(rid())) == 2
    assert await store.get(k1) is None and await store.get(k2) is None
    assert await store.delete() == 0


async def test_ttl_expiry(store: Store) -> None:
    k = keys.cache_entry(rid())
    await store.set(k, b"v", ttl=0.3)
    assert await store.get(k) == b"v"
    await asyncio.sleep(0.45)
    assert await store.get(k) is None
    assert await store.delete(k) == 0


async def test_keys_must_come_from_the_keys_module(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.get("some-bare-key")
    with pytest.raises(ValueError):
        await store.set("other:key", b"v", ttl=1)
    with pytest.raises(ValueError):
        await store.publish("events", b"x")
    with pytest.raises(ValueError):
        await store.set(keys.cache_entry("x"), b"v", ttl=0)


async def test_ping(store: Store) -> None:
    assert 0 <= await store.ping() < TIMEOUT


# --- admission ----------------------------------------------------------------------------------


async def test_exactly_limit_of_200_concurrent_acquires_across_three_daemons(daemons: list[Store]) -> None:
    sc = scope()
    ws = [Window("rpm", 60, 50)]
    results = await asyncio.gather(
        *(daemons[i % 3].acquire(sc, ws, [1], reservation_id=rid()) for i in range(200))
    )
    assert sum(r.admitted for r in results) == 50
    refused = [r for r in results if not r.admitted]
    assert all(r.blocked == ("rpm",) and 0 < r.retry_after <= 60 for r in refused)
    assert all(r.usage[0] <= 50 for r in results)
    [u] = await daemons[1].usage(sc, ws)
    assert (u.used, u.entries, u.limit) == (50, 50, 50)


async def test_token_windows_with_varied_amounts_concurrently(daemons: list[Store]) -> None:
    sc = scope()
    ws = [Window("rpm", 60, 1000), Window("tpm", 60, 1000)]
    amounts = [(i * 37) % 101 + 1 for i in range(120)]  # 1..101 tokens, 6000+ in total
    results = await asyncio.gather(
        *(daemons[i % 3].acquire(sc, ws, [1, a], reservation_id=rid()) for i, a in enumerate(amounts))
    )
    admitted = sum(a for a, r in zip(amounts, results, strict=True) if r.admitted)
    assert admitted <= 1000
    used = [u.used for u in await daemons[0].usage(sc, ws)]
    assert used == [sum(r.admitted for r in results), admitted]
    # every refusal was justified: usage only grows here, so it still cannot fit at the end
    for a, r in zip(amounts, results, strict=True):
        if not r.admitted:
            assert admitted + a > 1000 and r.blocked == ("tpm",)
    assert admitted > 1000 - 101  # and the window was actually filled, up to the last fit


async def test_token_windows_sequential_exact_outcomes(store: Store) -> None:
    sc = scope()
    ws = [Window("rpm", 60, 4), Window("tpm", 60, 100)]
    outcomes = []
    for amount in [40, 50, 20, 10, 0, 5]:
        a = await store.acquire(sc, ws, [1, amount], reservation_id=rid())
        outcomes.append((a.admitted, a.usage, a.blocked))
    assert outcomes == [
        (True, (1, 40), ()),
        (True, (2, 90), ()),
        (False, (2, 90), ("tpm",)),
        (True, (3, 100), ()),
        (True, (4, 100), ()),
        (False, (4, 100), ("rpm", "tpm")),
    ]


async def test_share_is_headroom_over_total_usage(store: Store) -> None:
    sc = scope()
    ws = [Window("rpm", 60, 10)]
    low = [await store.acquire(sc, ws, [1], share=0.6, reservation_id=rid()) for _ in range(8)]
    assert [a.admitted for a in low] == [True] * 6 + [False] * 2
    assert low[-1].retry_after < math.inf and low[-1].limits == (10,)
    high = [await store.acquire(sc, ws, [1], share=1.0, reservation_id=rid()) for _ in range(5)]
    assert [a.admitted for a in high] == [True] * 4 + [False]
    # LOW is held back by usage of all priorities
    assert not (await store.acquire(sc, ws, [1], share=0.6, reservation_id=rid())).admitted


async def test_request_that_can_never_fit_says_so(store: Store) -> None:
    ws = [Window("tpm", 60, 100)]
    a = await store.acquire(scope(), ws, [101], reservation_id=rid())
    assert not a.admitted and a.retry_after == math.inf
    b = await store.acquire(scope(), ws, [61], share=0.6, reservation_id=rid())
    assert not b.admitted and b.retry_after == math.inf


async def test_retry_after_is_accurate(store: Store) -> None:
    sc = scope()
    ws = [Window("rps", 1.5, 2)]
    assert (await store.acquire(sc, ws, [1], reservation_id=rid())).admitted
    await asyncio.sleep(0.3)
    assert (await store.acquire(sc, ws, [1], reservation_id=rid())).admitted
    refused = await store.acquire(sc, ws, [1], reservation_id=rid())
    assert not refused.admitted
    assert 1.0 < refused.retry_after <= 1.2 + 0.05  # the first entry leaves 1.5 s after it came
    started = time.monotonic()
    await asyncio.sleep(refused.retry_after - 0.15)
    assert not (await store.acquire(sc, ws, [1], reservation_id=rid())).admitted
    await asyncio.sleep(max(0.0, refused.retry_after + 0.02 - (time.monotonic() - started)))
    assert (await store.acquire(sc, ws, [1], reservation_id=rid())).admitted


async def test_adjust_returns_tokens_at_once(store: Store) -> None:
    sc = scope()
    ws = [Window("rpm", 60, 10), Window("tpm", 60, 100)]
    first = rid()
    assert (await store.acquire(sc, ws, [1, 80], reservation_id=first)).admitted
    assert not (await store.acquire(sc, ws, [1, 30], reservation_id=rid())).admitted
    await store.adjust(sc, ws, first, [1, 20])  # the estimate was 80, the call used 20
    assert [u.used for u in await store.usage(sc, ws)] == [1, 20]
    assert (await store.acquire(sc, ws, [1, 30], reservation_id=rid())).admitted
    # upward corrections count too, and unknown ids change nothing
    await store.adjust(sc, ws, first, [1, 70])
    await store.adjust(sc, ws, "never-recorded", [5, 500])
    assert [u.used for u in await store.usage(sc, ws)] == [2, 100]
    assert not (await store.acquire(sc, ws, [1, 1], reservation_id=rid())).admitted


async def test_adjust_announces_returned_capacity_only_while_someone_waits(store: Store) -> None:
    model = f"announce-{rid()}"
    sc = keys.quota_scope(model)
    ws = [Window("tpm", 60, 100)]
    ch = keys.channel(f"freed-{rid()}")
    announce = Announcement(keys.quota_waiting(model), ch, b"freed " + model.encode())
    first, second = rid(), rid()
    assert (await store.acquire(sc, ws, [60], reservation_id=first)).admitted
    assert (await store.acquire(sc, ws, [30], reservation_id=second)).admitted
    async with store.subscribe(ch) as sub:
        await store.adjust(sc, ws, first, [10], announce=announce)  # nobody waits: silence
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(sub), 0.3)
        await store.set(announce.flag, b"1", 5)  # a daemon has callers queued
        await store.adjust(sc, ws, second, [5], announce=announce)
        assert await asyncio.wait_for(anext(sub), 3) == announce.message
    assert [u.used for u in await store.usage(sc, ws)] == [15]  # both adjustments counted


async def test_adjust_keeps_the_reservation_time(store: Store) -> None:
    sc = scope()
    ws = [Window("tpm", 1.0, 100)]
    first = rid()
    assert (await store.acquire(sc, ws, [50], reservation_id=first)).admitted
    await asyncio.sleep(0.6)
    await store.adjust(sc, ws, first, [90])
    await asyncio.sleep(0.5)  # 1.1 s after the reservation: it has left, whatever its amount
    assert (await store.usage(sc, ws))[0].used == 0


async def test_replayed_reservation_id_is_not_recorded_twice(store: Store) -> None:
    sc = scope()
    ws = [Window("rpm", 60, 3)]
    same = rid()
    for _ in range(3):
        assert (await store.acquire(sc, ws, [1], reservation_id=same)).admitted
    [u] = await store.usage(sc, ws)
    assert (u.used, u.entries) == (1, 1)


async def test_usage_records_nothing(store: Store) -> None:
    sc = scope()
    ws = [Window("rpm", 60, 5), Window("rpd", 86400, 100, "America/Los_Angeles")]
    before = await store.usage(sc, ws)
    assert (before[0].used, before[0].entries, before[0].reset_after) == (0, 0, 0.0)
    await store.acquire(sc, ws, [1, 1], reservation_id=rid())
    after = await store.usage(sc, ws)
    assert [(u.name, u.used, u.limit, u.entries) for u in after] == [("rpm", 1, 5, 1), ("rpd", 1, 100, 1)]
    assert 59 < after[0].reset_after <= 60
    again = await store.usage(sc, ws)
    assert [(u.used, u.entries) for u in again] == [(u.used, u.entries) for u in after]


async def test_calendar_day_window_resets_at_pacific_midnight(store: Store) -> None:
    sc = scope()
    ws = [Window("rpd", 86400, 3, "America/Los_Angeles")]
    for _ in range(3):
        assert (await store.acquire(sc, ws, [1], reservation_id=rid())).admitted
    refused = await store.acquire(sc, ws, [1], reservation_id=rid())
    expected = calendar_period("America/Los_Angeles", time.time())[1] - time.time()
    assert not refused.admitted
    assert refused.retry_after == pytest.approx(expected, abs=2.0)
    assert refused.reset_after[0] == pytest.approx(expected, abs=2.0)


async def test_bad_calls_are_refused(store: Store) -> None:
    ws = [Window("rpm", 60, 5)]
    with pytest.raises(ValueError):
        await store.acquire(scope(), [Window("rpm", 60, 5), Window("rpm", 1, 1)], [1, 1], reservation_id="x")
    with pytest.raises(ValueError):
        await store.acquire(scope(), ws, [1, 1], reservation_id="x")
    with pytest.raises(ValueError):
        await store.acquire(scope(), ws, [-1], reservation_id="x")
    with pytest.raises(ValueError):
        await store.acquire(scope(), ws, [1], reservation_id="")
    with pytest.raises(ValueError):
        await store.acquire(scope(), ws, [1], share=1.5, reservation_id="x")


# --- pub/sub -------------------------------------------------------------------------------------


async def test_publish_reaches_every_subscriber_on_every_daemon(daemons: list[Store]) -> None:
    ch = keys.channel(f"capacity-{rid()}")
    async with daemons[0].subscribe(ch) as sub_a, daemons[1].subscribe(ch) as sub_b:
        await daemons[2].publish(ch, b"freed:model-x")
        await daemons[2].publish(ch, b"second")
        for sub in (sub_a, sub_b):
            got = [await asyncio.wait_for(anext(sub), 3), await asyncio.wait_for(anext(sub), 3)]
            assert got == [b"freed:model-x", b"second"]
    # other channels are not delivered
    other = keys.channel(f"other-{rid()}")
    async with daemons[0].subscribe(ch) as sub:
        await daemons[1].publish(other, b"not for you")
        await daemons[1].publish(ch, b"for you")
        assert await asyncio.wait_for(anext(sub), 3) == b"for you"


# --- a pool of deployments: one admission over several scopes ---------------------------------


def lanes(*limits: int) -> list[Candidate]:
    """One model at several deployments (the same hash tag), an rpm window of each limit."""
    model = f"model-{uuid.uuid4().hex[:12]}"
    return [
        Candidate(keys.quota_scope(model, f"d{i}"), [Window("rpm", 60, limit)], [1])
        for i, limit in enumerate(limits)
    ]


async def test_acquire_any_fills_every_deployment_to_its_limit_and_no_further(daemons: list[Store]) -> None:
    cands = lanes(5, 10, 20)
    results = await asyncio.gather(
        *(daemons[i % 3].acquire_any(cands, reservation_id=rid()) for i in range(100))
    )
    assert sum(r.admitted for r in results) == 35
    chosen = [r.chosen for r in results if r.chosen is not None]
    assert [chosen.count(i) for i in range(3)] == [5, 10, 20]
    for c in cands:
        [u] = await daemons[1].usage(c.scope, c.windows)
        assert u.used == u.limit
    refused = [r for r in results if not r.admitted]
    assert all(0 < r.retry_after <= 60 and len(r.admissions) == 3 for r in refused)
    assert all(a.blocked == ("rpm",) for r in refused for a in r.admissions)


async def test_acquire_any_takes_the_first_with_room_and_looks_no_further(store: Store) -> None:
    cands = lanes(10, 30, 100)
    got = [await store.acquire_any(cands, reservation_id=rid()) for _ in range(41)]
    assert [g.chosen for g in got] == [0] * 10 + [1] * 30 + [2]  # in the order given
    assert got[0].admissions[1].usage == () == got[0].admissions[2].usage  # not looked at
    assert got[40].admissions[0].usage == (10,) and got[40].admissions[1].usage == (30,)


async def test_acquire_any_replay_is_admitted_where_it_was_recorded(store: Store) -> None:
    cands = lanes(1, 1)
    same = rid()
    first = await store.acquire_any(cands, reservation_id=same)
    again = await store.acquire_any(cands, reservation_id=same)
    assert first.chosen is not None and again.chosen == first.chosen
    other = await store.acquire_any(cands, reservation_id=rid())
    assert other.chosen == 1 - first.chosen  # the replay took no second unit
    assert not (await store.acquire_any(cands, reservation_id=rid())).admitted


async def test_acquire_any_replay_in_a_later_candidate_reports_only_that_one(store: Store) -> None:
    cands = [
        Candidate(c.scope, [Window("rpm", 60, 1), Window("tpm", 60, 100)], [1, 10]) for c in lanes(1, 1, 1)
    ]
    assert (await store.acquire_any(cands, reservation_id=rid(), fresh=True)).chosen == 0
    second = rid()
    assert (await store.acquire_any(cands, reservation_id=second, fresh=True)).chosen == 1
    again = await store.acquire_any(cands, reservation_id=second)  # a resend: not fresh
    assert again.chosen == 1 and again.admissions[1].usage == (1, 10)
    assert again.admissions[0].usage == () == again.admissions[2].usage  # not looked at
    assert (await store.acquire_any(cands, reservation_id=rid(), fresh=True)).chosen == 2


async def test_acquire_any_refusal_says_when_the_soonest_deployment_frees(store: Store) -> None:
    model = f"model-{uuid.uuid4().hex[:12]}"
    slow = Candidate(keys.quota_scope(model, "slow"), [Window("rpm", 60, 1)], [1])
    fast = Candidate(keys.quota_scope(model, "fast"), [Window("rpm", 1, 1)], [1])
    assert (await store.acquire_any([slow, fast], reservation_id=rid())).admitted
    assert (await store.acquire_any([slow, fast], reservation_id=rid())).admitted
    refused = await store.acquire_any([slow, fast], reservation_id=rid())
    assert refused.chosen is None and 0 < refused.retry_after <= 1.0
    never = Candidate(keys.quota_scope(model, "tiny"), [Window("tpm", 60, 5)], [6])
    assert math.isinf((await store.acquire_any([never], reservation_id=rid())).retry_after)


async def test_acquire_any_keeps_a_claim_in_every_deployment_it_looks_at(store: Store) -> None:
    cands = lanes(1, 19)
    first = await store.acquire_any(cands, reservation_id=rid(), claim=Claim("d1", 1, 30.0))
    assert first.chosen == 0 and [a.claimed for a in first.admissions] == [(0,), ()]  # 1 not looked at
    second = await store.acquire_any(cands, reservation_id=rid(), claim=Claim("d1", 1, 30.0))
    assert second.chosen == 1
    assert [a.claimed for a in second.admissions] == [(0,), (9,)]  # half of what each has left


async def test_acquire_any_refuses_scopes_of_different_tags(store: Store) -> None:
    one = Candidate(scope(), [Window("rpm", 60, 1)], [1])
    with pytest.raises(ValueError, match="hash tag"):
        await store.acquire_any([one, Candidate(scope(), [Window("rpm", 60, 1)], [1])], reservation_id=rid())
    with pytest.raises(ValueError):
        await store.acquire_any([], reservation_id=rid())


def test_a_models_deployments_share_its_tag_and_not_its_keys() -> None:
    a, b = keys.quota_scope("m", "a"), keys.quota_scope("m", "b")
    assert keys.scope_tag(a) == keys.scope_tag(b) == keys.scope_tag(keys.quota_scope("m"))
    assert (
        keys.window_keys(a, "rpm").log != keys.window_keys(b, "rpm").log != keys.window_keys("q:m", "rpm").log
    )
    assert keys.quota_hold("m/a") != keys.quota_hold("m") and keys.hash_tag(keys.quota_hold("m/a")) == "q:m"


# --- claims: what each daemon may admit alone while the store is away ---------------------------


async def test_claims_and_usage_never_exceed_the_limit(daemons: list[Store]) -> None:
    """Each daemon's claim is an equal part of what is left beside the others'; the others'
    count as used, so usage plus every claim stays within the limit whoever calls."""
    sc = scope()
    ws = [Window("rpm", 60, 20)]
    claims = {f"d{i}": 0 for i in range(3)}
    used = 0
    for n in range(40):
        who = f"d{n % 3}" if n < 30 else "d0"  # then one daemon alone
        got = await daemons[n % 3].acquire(sc, ws, [1], reservation_id=rid(), claim=Claim(who, 3, 30.0))
        claims[who] = got.claimed[0]
        used = got.usage[0]
        if n == 0:
            assert claims["d0"] == 19 // 4  # a part of what is left: up to three daemons, one spare
        assert used + sum(claims.values()) <= 20, (n, used, claims)
    assert used == 20  # claims shrink as the window fills: the whole limit is used


async def test_a_claim_that_expired_frees_its_units(store: Store) -> None:
    sc = scope()
    ws = [Window("rpm", 60, 10)]
    first = await store.acquire(sc, ws, [1], reservation_id=rid(), claim=Claim("idle", 1, 0.3))
    assert first.claimed == (4,)  # half the rest: one daemon, one part spare
    for _ in range(5):  # the five units nobody claimed
        assert (await store.acquire(sc, ws, [1], reservation_id=rid(), claim=Claim("busy", 1, 0.3))).admitted
    blocked = await store.acquire(sc, ws, [1], reservation_id=rid(), claim=Claim("busy", 1, 0.3))
    assert not blocked.admitted and blocked.claimed == (0,) and blocked.retry_after > 0
    await asyncio.sleep(0.4)
    later = await store.acquire(sc, ws, [1], reservation_id=rid(), claim=Claim("busy", 1, 0.3))
    assert later.admitted and later.claimed == (1,)  # (10 - 7) // 2


async def test_a_refused_claimant_lets_go_of_its_claim(store: Store) -> None:
    """Stale claims of daemons whose own calls are refused must not keep the window's last
    units from a call that fits: a refused claimant holds nothing until admitted again."""
    sc, ws = scope(), [Window("rpm", 60, 10)]
    assert (await store.acquire(sc, ws, [1], reservation_id=rid(), claim=Claim("d1", 2, 30.0))).claimed == (
        3,
    )
    assert not (await store.acquire(sc, ws, [7], reservation_id=rid(), claim=Claim("d2", 2, 30.0))).admitted
    refused = await store.acquire(sc, ws, [10], reservation_id=rid(), claim=Claim("d1", 2, 30.0))
    assert not refused.admitted and refused.claimed == (0,)
    assert (await store.acquire(sc, ws, [7], reservation_id=rid(), claim=Claim("d2", 2, 30.0))).admitted


async def test_record_writes_back_whatever_the_window_holds(store: Store) -> None:
    sc = scope()
    ws = [Window("rpm", 60, 3)]
    await store.record(sc, ws, [5], reservation_id="back")
    await store.record(sc, ws, [5], reservation_id="back")  # a repeat is a no-op
    assert [u.used for u in await store.usage(sc, ws)] == [5]
    assert not (await store.acquire(sc, ws, [1], reservation_id=rid())).admitted


# --- key layout ----------------------------------------------------------------------------------


def test_one_scope_one_hash_tag_and_not_a_global_one() -> None:
    flash = keys.window_keys(keys.quota_scope("gemini-2.0-flash"), "rpm").as_list()
    flash += keys.window_keys(keys.quota_scope("gemini-2.0-flash"), "tpd").as_list()
    pro = keys.window_keys(keys.quota_scope("gemini-2.5-pro"), "rpm").as_list()
    alice = keys.window_keys(keys.user_scope("alice"), "minute").as_list()
    assert {keys.hash_tag(k) for k in flash} == {"q:gemini-2.0-flash"}
    assert {keys.hash_tag(k) for k in pro} == {"q:gemini-2.5-pro"}
    assert {keys.hash_tag(k) for k in alice} == {"u:alice"}
    assert len(set(flash)) == 8  # four keys per window
    assert keys.hash_tag(keys.cache_entry("ab12")) == "c:ab12"
    assert keys.hash_tag(keys.cache_entry("ab12")) != keys.hash_tag(keys.cache_entry("cd34"))
    for k in [*flash, *pro, *alice, keys.cache_entry("x"), keys.channel("capacity")]:
        assert k.startswith("knowctl:")


def test_braces_in_names_cannot_break_the_tag() -> None:
    evil = keys.window_keys(keys.user_scope("a}b{c"), "minute").log
    assert keys.hash_tag(evil) == "u:a%7Db%7Bc"
    assert keys.hash_tag(keys.window_keys(keys.user_scope("a"), "minute").log) == "u:a"
    assert keys.scope_tag("u:%7D") != keys.scope_tag("u:}")


async def test_redis_keys_are_the_documented_ones_and_expire(redis_url: str) -> None:
    sc = scope()
    ws = [Window("rpm", 2.0, 5), Window("rpd", 86400, 50, "America/Los_Angeles")]
    async with open_store(redis_url, timeout=TIMEOUT) as store:
        await store.acquire(sc, ws, [1, 1], reservation_id=rid())
    raw = aredis.Redis.from_url(redis_url)
    try:
        found = sorted(
            k.decode() if isinstance(k, bytes) else k
            for k in await raw.keys(f"knowctl:{keys.scope_tag(sc)}*")
        )
        logs = [keys.window_keys(sc, w.name) for w in ws]
        expected = sorted(k for wk in logs for k in (wk.log, wk.amounts, wk.total))  # no claim asked
        assert found == expected
        for k in keys.window_keys(sc, "rpm").as_list()[:3]:
            assert 0 < await raw.pttl(k) <= 2000 + 5000
        midnight = calendar_period("America/Los_Angeles", time.time())[1] - time.time()
        for k in keys.window_keys(sc, "rpd").as_list()[:3]:
            assert abs(await raw.pttl(k) / 1000 - (midnight + 5)) < 3
        async with open_store(redis_url, timeout=TIMEOUT) as store:
            await store.acquire(sc, ws, [1, 1], reservation_id=rid(), claim=Claim("d1", 2, 4.0))
        for wk in logs:  # a claim lives for its ttl (plus the margin), whatever the window
            assert 0 < await raw.pttl(wk.claims) <= 4000 + 5000
    finally:
        await raw.aclose()


async def test_scripts_reload_after_script_flush(redis_url: str) -> None:
    sc = scope()
    ws = [Window("rpm", 60, 2)]
    async with open_store(redis_url, timeout=TIMEOUT) as store:
        assert (await store.acquire(sc, ws, [1], reservation_id=rid())).admitted
        raw = aredis.Redis.from_url(redis_url)
        await raw.script_flush()
        await raw.aclose()
        assert (await store.acquire(sc, ws, [1], reservation_id=rid())).admitted
        assert not (await store.acquire(sc, ws, [1], reservation_id=rid())).admitted


# --- outages ------------------------------------------------------------------------------------


async def _assert_unavailable_quickly(store: Store, timeout: float) -> None:
    sc, ws = scope(), [Window("rpm", 60, 5)]
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.ping(),
        lambda: store.get(keys.cache_entry("k")),
        lambda: store.set(keys.cache_entry("k"), b"v", ttl=5),
        lambda: store.acquire(sc, ws, [1], reservation_id=rid()),
        lambda: store.usage(sc, ws),
        lambda: store.publish(keys.channel("c"), b"m"),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()
        assert time.monotonic() - started < timeout + 0.5


async def test_closed_port_is_unavailable_fast() -> None:
    store = open_store(f"redis://{LOOPBACK}:{free_port()}/0", timeout=0.5)
    await _assert_unavailable_quickly(store, 0.5)
    await store.close()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen(64)
    yield int(sock.getsockname()[1])
    sock.close()


async def test_server_that_never_answers_times_out(blackhole: int) -> None:
    store = open_store(f"redis://{LOOPBACK}:{blackhole}/0", timeout=0.4)
    await _assert_unavailable_quickly(store, 0.4)
    await store.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


async def test_redis_stopped_then_restarted(private_redis: RedisServer) -> None:
    store = open_store(private_redis.url, timeout=0.5)
    ws = [Window("rpm", 60, 5)]
    assert (await store.acquire(scope(), ws, [1], reservation_id=rid())).admitted
    async with store.subscribe(keys.channel("wake")) as sub:
        private_redis.stop()
        await _assert_unavailable_quickly(store, 0.5)
        with pytest.raises(StoreUnavailable):  # the subscription notices too
            await asyncio.wait_for(anext(sub), 3)
        private_redis.start()
        # recovers on its own: fresh connections, scripts re-loaded on NOSCRIPT
        for _ in range(3):
            try:
                assert (await store.acquire(scope(), ws, [1], reservation_id=rid())).admitted
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("store did not recover after Redis came back")
    await store.close()


# --- URLs and secrets -------------------------------------------------------------------------------


def test_describe_redacts_passwords() -> None:
    store = open_store("redis://admin:s3cr%40t@cache.internal:6380/2", timeout=1)
    assert store.describe() == "redis://admin:***@cache.internal:6380/2"
    assert "s3cr" not in redact_url("rediss://:s3cret@h/0") and "***" in redact_url("rediss://:s3cret@h/0")
    assert "hunter2" not in redact_url("redis://h:6379/0?password=hunter2&db=1")
    assert redact_url("redis://h:6379/0?db=1") == "redis://h:6379/0?db=1"
    assert open_store("memory://", timeout=1).describe() == "memory://"
    assert open_store("memory://", timeout=1).backend == "memory" and store.backend == "redis"


async def test_unavailable_errors_do_not_leak_the_password() -> None:
    store = open_store(f"redis://:topsecret@{LOOPBACK}:{free_port()}/0", timeout=0.5)
    with pytest.raises(StoreUnavailable) as info:
        await store.ping()
    assert "topsecret" not in str(info.value) and "***" in str(info.value)
    await store.close()


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError):
        open_store("mongodb://x", timeout=1)


def test_importing_the_store_package_does_not_import_redis() -> None:
    code = "import sys, knowctl.store; assert 'redis' not in sys.modules, 'redis imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- memory backend with an injected clock ------------------------------------------------------


async def test_memory_store_follows_the_injected_clock() -> None:
    now = [1_000.0]
    store = MemoryStore(clock=lambda: now[0])
    k = keys.cache_entry("k")
    await store.set(k, b"v", ttl=10)
    now[0] += 9.999
    assert await store.get(k) == b"v"
    now[0] += 0.001
    assert await store.get(k) is None
    sc, ws = scope(), [Window("rpm", 60, 1)]
    assert (await store.acquire(sc, ws, [1], reservation_id="a")).admitted
    now[0] += 59.5
    refused = await store.acquire(sc, ws, [1], reservation_id="b")
    assert refused.retry_after == pytest.approx(0.5)
    now[0] += refused.retry_after
    assert (await store.acquire(sc, ws, [1], reservation_id="c")).admitted
    # idle scopes leave nothing behind
    now[0] += 61
    await store.usage(sc, ws)
    assert not store._logs


# --- the Lua scripts follow knowctl.policy.windows step for step ------------------------------


async def test_redis_scripts_and_memory_backend_agree(redis_url: str) -> None:
    # With minute-long windows nothing leaves during the test, so outcomes depend only on
    # the order of calls, and the two backends must answer every call identically.
    import random

    rng = random.Random(20240310)
    ws = [Window("rpm", 60, 15), Window("tpm", 60, 400), Window("rpd", 86400, 25, "America/Los_Angeles")]
    mem, red = MemoryStore(), open_store(redis_url, timeout=TIMEOUT)
    sc = scope()
    ids: list[str] = []
    try:
        for step in range(300):
            if ids and rng.random() < 0.25:
                target = rng.choice(ids)
                amounts = [rng.choice([0, 1]), rng.randint(0, 120), 1]
                await mem.adjust(sc, ws, target, amounts)
                await red.adjust(sc, ws, target, amounts)
            else:
                r = rng.choice([*ids, rid()]) if ids and rng.random() < 0.05 else rid()
                amounts = [1, rng.randint(0, 150), rng.choice([0, 1])]
                share = rng.choice([1.0, 0.8, 0.5])
                a = await mem.acquire(sc, ws, amounts, share=share, reservation_id=r)
                b = await red.acquire(sc, ws, amounts, share=share, reservation_id=r)
                assert (a.admitted, a.usage, a.blocked, a.limits) == (
                    b.admitted,
                    b.usage,
                    b.blocked,
                    b.limits,
                ), step
                assert math.isinf(a.retry_after) == math.isinf(b.retry_after), step
                if a.admitted:
                    ids.append(r)
            m_use = [(u.used, u.entries) for u in await mem.usage(sc, ws)]
            r_use = [(u.used, u.entries) for u in await red.usage(sc, ws)]
            assert m_use == r_use, step
    finally:
        await red.close()
        await mem.close()


async def test_closed_subscription_ends_iteration(store: Store) -> None:
    ch = keys.channel(f"closing-{rid()}")
    async with store.subscribe(ch) as sub:
        await store.publish(ch, b"one")
        assert await asyncio.wait_for(anext(sub), 3) == b"one"
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(sub), 3)
