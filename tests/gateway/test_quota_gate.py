"""ProviderQuota in-process, against memory:// and a real Redis (store_url).

Two ProviderQuota on one store stand for two daemons (on memory:// they share the one
MemoryStore object, which is what one process would do). Each test uses its own model
name, since the session's Redis is shared.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from knowctl.daemon.config import provider_config
from knowctl.daemon.context import CallContext
from knowctl.daemon.contracts import CallRefused, Ticket
from knowctl.daemon.quota.provider import ProviderQuota
from knowctl.policy.paths import parse_path
from knowctl.policy.priority import Priority
from knowctl.settings import Settings
from knowctl.store import Store, open_store
from tests.support.net import LOOPBACK, free_port

pytestmark = pytest.mark.anyio

WAIT = 10.0  # generous bound on anything that should happen "soon"


def model() -> str:
    return f"gate-{uuid.uuid4().hex[:10]}"


def ctx(name: str, text: str = "hi", priority: Priority = Priority.MEDIUM) -> CallContext:
    call = parse_path(f"/v1beta/models/{name}:generateContent")
    assert call is not None
    return CallContext(
        scope={"type": "http"},
        call=call,
        method="POST",
        raw_path=f"/v1beta/models/{name}:generateContent",
        query="",
        headers=[],
        header={},
        client_ip=LOOPBACK,
        payload={"contents": [{"role": "user", "parts": [{"text": text}]}]},
        priority=priority,
    )


@asynccontextmanager
async def gate(store: Store, **values: Any) -> AsyncIterator[ProviderQuota]:
    q = ProviderQuota(provider_config(Settings(**values)), store)
    await q.start()
    try:
        yield q
    finally:
        await q.close()


async def admit(q: ProviderQuota, c: CallContext) -> Ticket:
    """try_admit, then the queue: what the pipeline does without a stale answer."""
    first = await q.try_admit(c)
    if isinstance(first, Ticket):
        return first
    return await q.wait_admit(c, first)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def settle_turns() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# --- admission ------------------------------------------------------------------------------------


async def test_admits_up_to_the_limit_then_says_when(store: Store) -> None:
    m = model()
    async with gate(store, quota_rpm=5, quota_minute_s=30) as q:
        tickets = [await q.try_admit(ctx(m)) for _ in range(5)]
        assert all(isinstance(t, Ticket) and t.reservation_id for t in tickets)
        refused = await q.try_admit(ctx(m))
        assert isinstance(refused, float) and 25 < refused <= 30
        stats = (await q.stats())["models"][m]
        rpm = stats["windows"]["rpm"]
        assert (rpm["limit"], rpm["used"], rpm["remaining"], rpm["reserved"]) == (5, 5, 0, 5)
        assert 25 < rpm["reset_after_s"] <= 30 and rpm["reset_at"].endswith("Z")
        assert stats["counts"] == {"admitted": 5, "queued": 0, "refused": 0, "fallback": 0}
        for t in tickets:
            assert isinstance(t, Ticket)
            await q.settle(t, {"promptTokenCount": 1, "totalTokenCount": 2})
        assert (await q.stats())["models"][m]["windows"]["rpm"]["reserved"] == 0


async def test_model_without_limits_never_touches_the_store() -> None:
    closed = open_store("memory://", timeout=1)
    await closed.close()  # any store call would now raise StoreUnavailable
    async with gate(closed, quota_models={"other": {"rpm": 1}}) as q:
        ticket = await q.try_admit(ctx("unlimited"))
        assert isinstance(ticket, Ticket) and ticket.reservation_id == ""
        await q.settle(ticket, {"promptTokenCount": 3})
        assert not q.degraded


async def test_a_provider_429_holds_a_model_without_limits_of_ours(store: Store) -> None:
    m = model()
    async with gate(store, upstream_backoff_s=5) as q:
        assert isinstance(await q.try_admit(ctx(m)), Ticket)
        q.upstream_exhausted(m, None)
        held = await q.try_admit(ctx(m))
        assert isinstance(held, float) and 4 < held <= 5
        with pytest.raises(CallRefused) as refused:
            await q.wait_admit(ctx(m), held)
        assert refused.value.status == 429 and refused.value.retry_after is not None
        await asyncio.sleep(0.2)  # the hold is stored in the background
        async with gate(store, upstream_backoff_s=5) as other:  # another daemon finds the hold
            assert isinstance(await other.try_admit(ctx(m)), float)


async def test_per_model_limits_override_the_default(store: Store) -> None:
    small, big = model(), model()
    async with gate(store, quota_rpm=10, quota_models={small: {"rpm": 1}}) as q:
        assert isinstance(await q.try_admit(ctx(small)), Ticket)
        assert isinstance(await q.try_admit(ctx(small)), float)
        assert all(isinstance(t, Ticket) for t in [await q.try_admit(ctx(big)) for _ in range(10)])


async def test_low_priority_stops_at_its_share_critical_still_gets_through(store: Store) -> None:
    m = model()
    async with gate(store, quota_rpm=10, quota_minute_s=30) as q:
        low = [await q.try_admit(ctx(m, priority=Priority.LOW)) for _ in range(8)]
        assert sum(isinstance(t, Ticket) for t in low) == 6  # 60% of 10
        crit = [await q.try_admit(ctx(m, priority=Priority.CRITICAL)) for _ in range(5)]
        assert sum(isinstance(t, Ticket) for t in crit) == 4


async def test_token_window_counts_the_estimate_and_reconciles(store: Store) -> None:
    m = model()
    async with gate(store, quota_tpm=100, quota_minute_s=30) as q:
        ticket = await q.try_admit(ctx(m, "x" * 200))  # 50 tokens by bytes / 4
        assert isinstance(ticket, Ticket) and ticket.estimated_tokens == 50
        tpm = (await q.stats())["models"][m]["windows"]["tpm"]
        assert (tpm["used"], tpm["reserved"]) == (50, 50)
        await q.settle(ticket, {"promptTokenCount": 30, "totalTokenCount": 40})
        tpm = (await q.stats())["models"][m]["windows"]["tpm"]
        assert (tpm["used"], tpm["reserved"]) == (30, 0)
        kept = await q.try_admit(ctx(m, "x" * 40))
        assert isinstance(kept, Ticket)
        await q.settle(kept, None)  # cut-off stream: the reservation stands
        assert (await q.stats())["models"][m]["windows"]["tpm"]["used"] == 40


async def test_total_token_mode_reserves_max_output(store: Store) -> None:
    m = model()
    async with gate(store, quota_tpm=1000, quota_tokens="total", default_max_output_tokens=100) as q:
        c = ctx(m, "x" * 40)
        ticket = await q.try_admit(c)
        assert isinstance(ticket, Ticket) and ticket.estimated_tokens == 110
        assert c.payload is not None
        c.payload["generationConfig"] = {"maxOutputTokens": 5}
        ticket2 = await q.try_admit(c)
        assert isinstance(ticket2, Ticket) and ticket2.estimated_tokens == 15
        await q.settle(ticket, {"promptTokenCount": 10, "totalTokenCount": 60})
        assert (await q.stats())["models"][m]["windows"]["tpm"]["used"] == 75


async def test_count_tokens_estimator(store: Store) -> None:
    m = model()
    calls: list[CallContext] = []

    async def count(c: CallContext) -> int:
        calls.append(c)
        return 42

    settings = Settings(quota_tpm=50, quota_minute_s=30, token_estimator="count_tokens", queue_timeout=0.2)
    q = ProviderQuota(provider_config(settings), store, count_tokens=count)
    await q.start()
    try:
        first = await q.try_admit(ctx(m))
        assert isinstance(first, Ticket) and first.estimated_tokens == 42
        c = ctx(m)
        retry = await q.try_admit(c)
        assert isinstance(retry, float)
        with pytest.raises(CallRefused):  # the queue reuses the count, it does not ask again
            await asyncio.wait_for(q.wait_admit(c, 0.1), WAIT)
        assert len(calls) == 2
    finally:
        await q.close()


# --- the queue ---------------------------------------------------------------------------------------


async def test_queue_order_is_strict_priority_then_fifo(store: Store) -> None:
    m = model()
    # A token window filled by one call, then freed at once by its reconciliation: every
    # waiter fits then, so the order they get in is the queue's order alone.
    async with gate(store, quota_tpm=20, quota_minute_s=60, queue_timeout=30) as q:
        filler = await q.try_admit(ctx(m, "x" * 80))  # all 20 tokens
        assert isinstance(filler, Ticket)
        order: list[str] = []

        async def one(label: str, priority: Priority) -> None:
            await admit(q, ctx(m, "x", priority=priority))  # 1 token each
            order.append(label)

        plan = [
            ("low-1", Priority.LOW),
            ("medium-1", Priority.MEDIUM),
            ("high-1", Priority.HIGH),
            ("medium-2", Priority.MEDIUM),
            ("critical-1", Priority.CRITICAL),
            ("low-2", Priority.LOW),
            ("high-2", Priority.HIGH),
        ]
        tasks = []
        for i, (label, priority) in enumerate(plan, 1):
            tasks.append(asyncio.create_task(one(label, priority)))

            async def queued(n: int = i) -> bool:
                return bool((await q.stats())["queue"]["waiting"] == n)

            await eventually(queued)  # enqueued in this order
        # The queue's pump offers capacity to whoever is head when it asks the store; let an
        # attempt made for an earlier head (refused: the window is full) finish before capacity
        # frees, or on a slow store it could still land after the settle below.
        await asyncio.sleep(0.3)
        await q.settle(filler, {"promptTokenCount": 0})
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        assert order == ["critical-1", "high-1", "high-2", "medium-1", "medium-2", "low-1", "low-2"]
        counts = (await q.stats())["models"][m]["counts"]
        assert counts["queued"] == 7 and counts["admitted"] == 8


async def test_capacity_one_daemon_returns_wakes_the_waiters_of_another(store: Store) -> None:
    m = model()
    values: dict[str, Any] = {"quota_tpm": 20, "quota_minute_s": 60, "queue_timeout": 30}
    async with gate(store, **values) as a, gate(store, **values) as b:
        filler = await a.try_admit(ctx(m, "x" * 80))  # all 20 tokens, for the next 60 s
        assert isinstance(filler, Ticket)
        waiting = asyncio.create_task(admit(b, ctx(m, "x")))

        async def queued() -> bool:
            return bool((await b.stats())["queue"]["waiting"] == 1)

        await eventually(queued)
        await asyncio.sleep(0.3)  # b's flag "callers wait for this model" is in the store
        started = time.monotonic()
        await a.settle(filler, {"promptTokenCount": 1, "totalTokenCount": 1})  # used 1 of 20
        ticket = await asyncio.wait_for(waiting, WAIT)
        # Woken by a's announcement, not by its timer at the window's end a minute later.
        assert isinstance(ticket, Ticket) and time.monotonic() - started < 5


async def test_newcomers_do_not_overtake_the_queue(store: Store) -> None:
    m = model()
    async with gate(store, quota_rpm=1, quota_minute_s=0.5, queue_timeout=30) as q:
        assert isinstance(await q.try_admit(ctx(m)), Ticket)
        waiting = asyncio.create_task(admit(q, ctx(m)))
        await settle_turns()
        await asyncio.sleep(0.6)  # the window has freed; the waiter may be mid-acquire
        late = await q.try_admit(ctx(m))
        assert not isinstance(late, Ticket) or waiting.done()
        await asyncio.wait_for(waiting, WAIT)
        if isinstance(late, Ticket):
            await q.settle(late, None)
        # A more important newcomer may go first when the window has room.
        assert isinstance(await admit(q, ctx(m, priority=Priority.CRITICAL)), Ticket)


async def test_full_queue_refuses_with_accurate_retry_after(store: Store) -> None:
    m = model()
    async with gate(store, quota_rpm=1, quota_tpm=10_000, quota_minute_s=20, queue_size=2) as q:
        assert isinstance(await q.try_admit(ctx(m)), Ticket)
        retry = await q.try_admit(ctx(m))
        assert isinstance(retry, float) and 15 < retry <= 20
        waiters = [asyncio.create_task(q.wait_admit(ctx(m), retry)) for _ in range(2)]
        await settle_turns()
        with pytest.raises(CallRefused) as refused:
            await q.wait_admit(ctx(m), retry)
        assert refused.value.status == 429
        assert refused.value.retry_after == retry
        assert (await q.stats())["queue"]["waiting"] == 2
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert (await q.stats())["queue"]["waiting"] == 0


async def test_wait_timeout_refuses_with_when_capacity_frees(store: Store) -> None:
    m = model()
    # With a token window a reconciliation could free capacity early, so the request waits.
    async with gate(store, quota_tpm=10, quota_minute_s=20, queue_timeout=0.3) as q:
        assert isinstance(await q.try_admit(ctx(m, "x" * 40)), Ticket)
        retry = await q.try_admit(ctx(m))
        assert isinstance(retry, float)
        with pytest.raises(CallRefused) as refused:
            await q.wait_admit(ctx(m), retry)
        assert refused.value.status == 429
        assert refused.value.retry_after is not None and 15 < refused.value.retry_after <= 20
        counts = (await q.stats())["models"][m]["counts"]
        assert (counts["queued"], counts["refused"]) == (1, 1)


async def test_pointless_wait_is_refused_at_once(store: Store) -> None:
    m = model()
    async with gate(store, quota_rpm=1, quota_minute_s=20, queue_timeout=5) as q:
        assert isinstance(await q.try_admit(ctx(m)), Ticket)
        retry = await q.try_admit(ctx(m))
        assert isinstance(retry, float)
        started = time.monotonic()
        with pytest.raises(CallRefused) as refused:
            await q.wait_admit(ctx(m), retry)
        assert time.monotonic() - started < 5  # did not sit out the timeout
        assert refused.value.retry_after == retry


async def test_request_that_can_never_fit_is_refused(store: Store) -> None:
    m = model()
    async with gate(store, quota_tpm=10) as q:
        retry = await q.try_admit(ctx(m, "x" * 100))
        assert retry == math.inf
        with pytest.raises(CallRefused) as refused:
            await q.wait_admit(ctx(m, "x" * 100), retry)
        assert refused.value.status == 429 and refused.value.retry_after is None


async def test_waiter_wakes_when_the_window_frees(store: Store) -> None:
    m = model()
    async with gate(store, quota_rpm=1, quota_minute_s=1.0, queue_timeout=WAIT) as q:
        assert isinstance(await q.try_admit(ctx(m)), Ticket)
        retry = await q.try_admit(ctx(m))
        assert isinstance(retry, float) and 0 < retry <= 1.0
        started = time.monotonic()
        ticket = await asyncio.wait_for(q.wait_admit(ctx(m), retry), WAIT)
        assert isinstance(ticket, Ticket)
        assert time.monotonic() - started < WAIT / 2


async def test_settle_on_another_daemon_wakes_the_waiter(store: Store) -> None:
    m = model()
    values: dict[str, Any] = {"quota_tpm": 100, "quota_minute_s": 60, "queue_timeout": 30}
    async with gate(store, **values) as a, gate(store, **values) as b:
        big = await a.try_admit(ctx(m, "x" * 320))  # 80 tokens reserved
        assert isinstance(big, Ticket)
        retry = await b.try_admit(ctx(m, "y" * 160))  # 40 more would pass 100
        assert isinstance(retry, float) and retry > 50  # only time would free it
        waiting = asyncio.create_task(b.wait_admit(ctx(m, "y" * 160), retry))
        await settle_turns()
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await a.settle(big, {"promptTokenCount": 10, "totalTokenCount": 20})  # 70 tokens back
        ticket = await asyncio.wait_for(waiting, WAIT)  # long before the 60 s window
        assert isinstance(ticket, Ticket) and ticket.estimated_tokens == 40
        assert (await b.stats())["models"][m]["windows"]["tpm"]["used"] == 50


async def test_close_answers_waiters(store: Store) -> None:
    m = model()
    q = ProviderQuota(provider_config(Settings(quota_tpm=10, quota_minute_s=30, queue_timeout=30)), store)
    await q.start()
    assert isinstance(await q.try_admit(ctx(m, "x" * 40)), Ticket)
    retry = await q.try_admit(ctx(m))
    assert isinstance(retry, float)
    waiting = asyncio.create_task(q.wait_admit(ctx(m), retry))
    await settle_turns()
    await q.close()
    with pytest.raises(CallRefused) as refused:
        await asyncio.wait_for(waiting, WAIT)
    assert refused.value.status == 503


# --- upstream 429 ------------------------------------------------------------------------------------


async def test_upstream_429_holds_the_model_on_every_daemon(store: Store) -> None:
    m = model()
    values: dict[str, Any] = {"quota_rpm": 100, "queue_timeout": WAIT}
    async with gate(store, **values) as a, gate(store, **values) as b:
        assert isinstance(await b.try_admit(ctx(m)), Ticket)  # b knows the model
        a.upstream_exhausted(m, 1.0)  # RetryInfo: 1 s
        held = await a.try_admit(ctx(m))
        assert isinstance(held, float) and 0 < held <= 1.0

        async def b_held() -> bool:
            return isinstance(await b.try_admit(ctx(m)), float)

        await eventually(b_held, 1.0)
        stats = (await b.stats())["models"][m]
        assert stats["exhausted"] is not None and stats["exhausted"]["remaining_s"] <= 1.0
        # a daemon that starts during the hold finds it in the store
        async with gate(store, **values) as c:
            assert isinstance(await c.try_admit(ctx(m)), float)
            assert isinstance(await asyncio.wait_for(admit(c, ctx(m)), WAIT), Ticket)
        assert isinstance(await asyncio.wait_for(admit(a, ctx(m)), WAIT), Ticket)


async def test_upstream_429_without_delay_backs_off_exponentially(store: Store) -> None:
    # Holds of a second and more: a busy machine's delay between a 429 and the next look
    # (a store round trip) stays well inside each step of the back-off.
    m = model()
    async with gate(store, quota_rpm=100, upstream_backoff_s=1.0, upstream_backoff_max_s=2.5) as q:
        q.upstream_exhausted(m, None)
        q.upstream_exhausted(m, None)  # in flight during the hold: no escalation
        first = await q.try_admit(ctx(m))
        assert isinstance(first, float) and first <= 1.0
        await asyncio.sleep(first + 0.01)
        q.upstream_exhausted(m, None)
        second = await q.try_admit(ctx(m))
        assert isinstance(second, float) and 1.0 < second <= 2.0
        await asyncio.sleep(second + 0.01)
        q.upstream_exhausted(m, None)
        third = await q.try_admit(ctx(m))
        assert isinstance(third, float) and 2.0 < third <= 2.5  # capped
        await asyncio.sleep(third + 0.01)
        ticket = await q.try_admit(ctx(m))
        assert isinstance(ticket, Ticket)
        await q.settle(ticket, {"promptTokenCount": 1})  # a success resets the streak
        q.upstream_exhausted(m, None)
        again = await q.try_admit(ctx(m))
        assert isinstance(again, float) and again <= 1.0


# --- store outage ------------------------------------------------------------------------------------


async def test_store_outage_falls_back_to_this_daemons_share() -> None:
    dead = open_store(f"redis://{LOOPBACK}:{free_port()}/0", timeout=0.2)
    m = model()
    try:
        async with gate(dead, quota_rpm=6, quota_minute_s=1.5, max_replicas=2) as q:
            # The local window starts as if the shared one had been full at the outage.
            first = await q.try_admit(ctx(m))
            assert isinstance(first, float) and 0 < first <= 1.5
            stats = await q.stats()
            assert stats["degraded"] is True and stats["max_replicas"] == 2
            await asyncio.sleep(first + 0.01)
            results = [await q.try_admit(ctx(m)) for _ in range(4)]
            assert [isinstance(r, Ticket) for r in results] == [True, True, True, False]  # 6 / 2
            assert (await q.stats())["models"][m]["windows"]["rpm"]["used"] == 3
            for r in results[:3]:
                assert isinstance(r, Ticket)
                await q.settle(r, {"promptTokenCount": 1})
    finally:
        await dead.close()


async def test_record_fallback_is_counted(store: Store) -> None:
    m = model()
    async with gate(store, quota_rpm=1) as q:
        q.record_fallback(m)
        q.record_fallback(m)
        assert (await q.stats())["models"][m]["counts"]["fallback"] == 2
