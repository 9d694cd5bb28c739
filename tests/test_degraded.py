"""Local share windows (knowctl/daemon/degraded.py) and the breaker's state (pure, fast).

The property test plays a whole fleet through an outage: daemons admit from a shared window
(standing for Redis) until the store dies, notice the outage at different moments, admit
from their shares, notice the return at different moments (the store may come back empty),
recover, and go on; a daemon whose breaker never opened learns of an empty store from its
epoch. Whatever the timings, no window of the limit's length ever holds more
admissions than the limit.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from knowctl.daemon.degraded import LocalShare, Mode, local_limit
from knowctl.policy.windows import Window, WindowLog, try_admit
from knowctl.store.breaker import BreakerState, intervals


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


W = 10.0


def test_share_is_the_limit_divided_by_the_replicas() -> None:
    assert [local_limit(10, r) for r in (1, 2, 3, 4, 11)] == [10, 5, 3, 2, 0]


def test_first_local_window_admits_nothing_then_the_share() -> None:
    clock = Clock()
    share = LocalShare(replicas=2, grace_s=1.0, clock=clock)
    windows = (Window("rpm", W, 6),)
    assert share.mode("s", windows) is Mode.SHARED
    share.store_down()
    assert share.mode("s", windows) is Mode.LOCAL
    clock.now += 3  # a scope first seen well into the outage starts full all the same
    refused = share.acquire("s", windows, [1], 1.0, "a")
    assert not refused.admitted and math.isclose(refused.retry_after, W - 3)
    clock.now += W - 3
    got = [share.acquire("s", windows, [1], 1.0, f"r{i}").admitted for i in range(4)]
    assert got == [True, True, True, False]  # 6 // 2
    assert share.usage("s", windows)[0].used == 3


def test_windows_that_start_empty_admit_the_share_at_once() -> None:
    """Per-user limits (start_full=False): the share from the first moment, never more."""
    clock = Clock()
    share = LocalShare(replicas=2, grace_s=1.0, start_full=False, clock=clock)
    windows = (Window("minute", W, 6),)
    share.store_down()
    got = [share.acquire("u", windows, [1], 1.0, f"r{i}").admitted for i in range(4)]
    assert got == [True, True, True, False]  # 6 // 2, with no wait for a phantom to leave
    clock.now += W
    assert share.acquire("u", windows, [1], 1.0, "later").admitted


def test_recovery_counts_against_both_until_the_local_entries_left() -> None:
    clock = Clock()
    share = LocalShare(replicas=1, grace_s=1.0, clock=clock)
    windows = (Window("rpm", W, 5),)
    share.store_down()
    clock.now += W
    assert share.acquire("s", windows, [1], 1.0, "x").admitted
    clock.now += 2
    share.store_up()
    assert share.mode("s", windows) is Mode.BOTH and share.recovering
    clock.now += W + 1 - 0.01
    assert share.mode("s", windows) is Mode.BOTH
    clock.now += 0.02
    assert share.mode("s", windows) is Mode.SHARED
    assert not share.recovering  # the scope's local state is gone


def test_a_new_outage_starts_full_again() -> None:
    clock = Clock()
    share = LocalShare(replicas=1, grace_s=0.0, clock=clock)
    windows = (Window("rpm", W, 2),)
    share.store_down()
    clock.now += W
    assert share.acquire("s", windows, [1], 1.0, "a").admitted
    share.store_up()
    clock.now += 1
    share.store_down()
    assert not share.acquire("s", windows, [1], 1.0, "b").admitted


def test_idle_scopes_are_swept() -> None:
    clock = Clock()
    share = LocalShare(replicas=1, grace_s=0.0, clock=clock)
    windows = (Window("rpm", W, 2),)
    share.store_down()
    for i in range(3000):
        share.usage(f"user-{i}", windows)
        if i % 1000 == 999:
            clock.now += W + 1  # the earlier scopes' phantoms have left
    assert len(share._logs) < 2100


def test_breaker_opens_only_without_any_success_for_a_while() -> None:
    open_after, probe = intervals(0.05)
    assert (open_after, probe) == (0.5, 0.5)
    b = BreakerState(open_after)
    assert not b.failure(0.0) and not b.failure(0.0) and b.failure(0.0)  # never answered: 3 failures
    assert b.success(1.0) and not b.is_open
    for t in (1.1, 1.2, 1.3, 1.4):  # overload: failures, but a success a moment ago
        assert not b.failure(t)
    assert b.failure(1.6) and b.is_open
    assert not b.failure(1.7)  # already open: no second "opened"
    assert b.success(2.0) and not b.success(2.1)


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(1, 12),
    replicas=st.integers(1, 4),
    running=st.integers(1, 4),
    kill_at=st.floats(0, 25),
    outage_s=st.floats(0.5, 30),
    notice_down=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
    notice_up=st.lists(st.floats(0.0, 0.5), min_size=4, max_size=4),
    keeps_history=st.booleans(),
    gap=st.floats(0.02, 0.5),
    extra=st.lists(st.tuples(st.floats(0, 70), st.integers(0, 3)), max_size=50),
)
def test_a_fleet_never_over_admits_through_an_outage(
    limit: int,
    replicas: int,
    running: int,
    kill_at: float,
    outage_s: float,
    notice_down: list[float],
    notice_up: list[float],
    keeps_history: bool,
    gap: float,
    extra: list[tuple[float, int]],
) -> None:
    running = min(running, replicas)
    window = Window("rpm", W, limit)
    windows = (window,)
    back_at = kill_at + outage_s
    clock = Clock(0.0)
    daemons = [LocalShare(replicas, grace_s=1.0, clock=clock) for _ in range(running)]
    shared = WindowLog()
    admitted: list[float] = []
    # Events: requests, and each daemon noticing the outage and the return (in time order).
    # Steady load (so windows fill up) on every daemon in turn, plus some random calls.
    arrivals = [(k * gap, k) for k in range(int(70 / gap))] + extra
    events: list[tuple[float, int, str]] = [(t, d % running, "call") for t, d in arrivals]
    blip = set()  # daemons whose breaker never opened: they re-read the store's epoch
    for i in range(running):
        down_seen = kill_at + notice_down[i]
        if down_seen < back_at:
            events.append((down_seen, i, "down"))
            events.append((back_at + notice_up[i], i, "up"))
        elif not keeps_history:
            blip.add(i)  # the outage was over before the breaker opened, but the epoch changed
    wiped = False
    for n, (t, i, kind) in enumerate(sorted(events)):
        clock.now = t
        me = daemons[i]
        if kind == "down":
            me.store_down()
            continue
        if kind == "up":
            me.store_up()
            continue
        reachable = not (kill_at <= t < back_at)
        if t >= back_at and not keeps_history and not wiped:
            shared = WindowLog()  # Redis came back empty
            wiped = True
        rid = f"r{n}"
        if t >= back_at and i in blip:  # the first call after a failure re-reads the epoch
            blip.discard(i)
            me.store_down()
            me.store_up()
        mode = me.mode("q", windows)
        if mode is Mode.LOCAL:
            if me.acquire("q", windows, [1], 1.0, rid).admitted:
                admitted.append(t)
            continue
        if not reachable:
            continue  # the store call fails; the real code retries until the breaker opens
        if mode is Mode.BOTH and not me.acquire("q", windows, [1], 1.0, rid).admitted:
            continue
        verdict = try_admit([shared], windows, [1], [limit], rid, t)
        if verdict.admitted:
            admitted.append(t)
        elif mode is Mode.BOTH:
            me.adjust("q", windows, rid, [0])
    admitted.sort()
    start = 0
    for end, t in enumerate(admitted):
        while admitted[start] + W <= t:
            start += 1
        assert end - start + 1 <= limit, (admitted[start : end + 1], limit)
