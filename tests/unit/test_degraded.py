"""Local share windows (knowctl/daemon/windows/degraded.py) and the breaker's state (pure, fast).

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

from knowctl.daemon.windows.degraded import LocalShare, Mode, local_limit
from knowctl.policy.windows import Window, WindowLog, claim_size, try_admit
from knowctl.store.breaker import BreakerState, intervals


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


W = 10.0


def test_share_is_the_limit_divided_by_the_replicas() -> None:
    assert [local_limit(10, r) for r in (1, 2, 3, 4, 11)] == [10, 5, 3, 2, 0]


def test_without_a_fresh_claim_the_first_local_window_admits_nothing_then_the_share() -> None:
    clock = Clock()
    share = LocalShare(replicas=2, grace_s=1.0, claim_trust_s=5.0, clock=clock)
    windows = (Window("rpm", W, 6),)
    share.claimed("s", windows, (3,))
    clock.now += 6  # the claim is older than it is trusted for
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


def test_a_daemon_admits_its_claim_at_once_then_its_share() -> None:
    """What the shared store let it claim is this daemon's to admit the moment it is down."""
    clock = Clock()
    share = LocalShare(replicas=2, grace_s=1.0, claim_trust_s=5.0, clock=clock)
    windows = (Window("rpm", W, 10), Window("rpd", 100 * W, 1000))
    share.claimed("s", windows, (2, 400))
    clock.now += 1
    share.store_down()
    got = [share.acquire("s", windows, [1, 1], 1.0, f"a{i}").admitted for i in range(3)]
    assert got == [True, True, False]  # the rpm claim
    minute = (windows[0],)
    share.claimed("m", minute, (2,))
    clock.now += W  # what the shared window held before the outage has left
    got = [share.acquire("m", minute, [1], 1.0, f"b{i}").admitted for i in range(6)]
    assert got == [True] * 5 + [False]  # 10 // 2 a window


def test_a_claim_is_spent_only_while_the_store_still_keeps_it_for_us() -> None:
    """The store forgets a claim after a while (daemons that still reach it may then use
    its units): past that, what is left of it is not admitted until the phantom has left."""
    clock = Clock()
    share = LocalShare(replicas=1, grace_s=1.0, claim_trust_s=5.0, clock=clock)
    windows = (Window("rpd", 100 * W, 1000),)
    share.claimed("s", windows, (400,))
    share.store_down()
    assert share.acquire("s", windows, [1], 1.0, "early").admitted
    clock.now += 5.01
    late = share.acquire("s", windows, [1], 1.0, "late")
    assert not late.admitted and late.retry_after > 900
    for back in share.store_up():  # the return ends it: no day-long lockout after it
        assert back.amounts == (1,)
        share.written_back(back)
    clock.now += 1.01
    assert share.mode("s", windows) is Mode.SHARED


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


def test_the_return_writes_back_and_recovers_only_for_the_grace() -> None:
    """A stall costs about its length: the local admissions go back into the shared windows,
    both decide for the grace, then the shared store alone, with no window-long lockout."""
    clock = Clock()
    share = LocalShare(replicas=1, grace_s=1.0, claim_trust_s=5.0, clock=clock)
    windows = (Window("rpm", W, 100), Window("rpd", 1000 * W, 10_000))
    share.claimed("s", windows, (50, 9000))
    share.store_down()
    for i in range(7):
        assert share.acquire("s", windows, [1, 3], 1.0, f"r{i}").admitted
    clock.now += 1
    backs = share.store_up()
    assert [(b.scope, b.amounts) for b in backs] == [("s", (7, 21))]
    assert share.mode("s", windows) is Mode.BOTH and share.recovering
    clock.now += 1.01  # past the grace, but the write-back is not confirmed yet
    assert share.mode("s", windows) is Mode.BOTH
    share.written_back(backs[0])
    assert share.mode("s", windows) is Mode.SHARED
    assert not share.recovering


def test_a_write_back_that_did_not_land_is_handed_out_again_with_its_id() -> None:
    clock = Clock()
    share = LocalShare(replicas=1, grace_s=0.0, start_full=False, clock=clock)
    windows = (Window("minute", W, 5),)
    share.store_down()
    assert share.acquire("u", windows, [1], 1.0, "x").admitted
    first = share.store_up()
    share.store_down()  # down again before the write-back landed
    assert share.acquire("u", windows, [1], 1.0, "y").admitted
    again = share.store_up()
    assert first[0] in again and len(again) == 2  # the same id: recorded once whatever happened
    assert sorted(b.amounts for b in again) == [(1,), (1,)]


def test_a_store_that_lost_its_history_recovers_until_the_phantom_left() -> None:
    clock = Clock()
    share = LocalShare(replicas=1, grace_s=1.0, clock=clock)
    windows = (Window("rpm", W, 5),)
    share.store_down()
    clock.now += W
    assert share.acquire("s", windows, [1], 1.0, "x").admitted
    clock.now += 2
    for back in share.store_up():
        share.written_back(back)
    share.state_lost()
    assert share.mode("s", windows) is Mode.BOTH and share.recovering
    clock.now += W + 1 - 0.01
    assert share.mode("s", windows) is Mode.BOTH
    clock.now += 0.02
    assert share.mode("s", windows) is Mode.SHARED


def test_a_new_outage_starts_from_the_claim_again() -> None:
    clock = Clock()
    share = LocalShare(replicas=1, grace_s=0.0, claim_trust_s=5.0, clock=clock)
    windows = (Window("rpm", W, 2),)
    share.store_down()
    clock.now += W
    assert share.acquire("s", windows, [1], 1.0, "a").admitted
    for back in share.store_up():
        share.written_back(back)
    clock.now += 1
    share.store_down()  # no claim since: starts full
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


class SharedModel:
    """The shared store as acquire.lua runs it: exact windows, and each daemon's claim."""

    def __init__(self, windows: tuple[Window, ...], replicas: int, ttl: float) -> None:
        self.windows = windows
        self.replicas = replicas
        self.ttl = ttl
        self.wipe()

    def wipe(self) -> None:
        self.logs = [WindowLog() for _ in self.windows]
        self.claims: list[dict[int, tuple[int, float]]] = [{} for _ in self.windows]

    def acquire(self, me: LocalShare, who: int, rid: str, now: float) -> bool:
        held = []
        for claims in self.claims:
            for d in [d for d, (_, at) in claims.items() if at + self.ttl <= now]:
                del claims[d]
            held.append(sum(u for d, (u, _) in claims.items() if d != who))
        limits = [w.limit for w in self.windows]
        verdict = try_admit(self.logs, self.windows, [1] * len(self.windows), limits, rid, now, held)
        granted = []
        for w, claims, used, others in zip(self.windows, self.claims, verdict.usage, held, strict=True):
            parts = max(self.replicas, 1 + sum(1 for d in claims if d != who)) + 1
            units = claim_size(w.limit, used, others, parts)
            if units:
                claims[who] = (units, now)
            else:
                claims.pop(who, None)
            granted.append(units)
        me.claimed("q", self.windows, tuple(granted))
        return verdict.admitted

    def record(self, amounts: tuple[int, ...], rid: str, now: float) -> None:
        for w, log, amount in zip(self.windows, self.logs, amounts, strict=True):
            log.trim(w, now)
            if rid not in log:
                log.record(rid, amount, now)


TRUST = 5.0
GRACE = 1.0
DAY = 40.0  # a "day" window, four minutes long, for the day-window cases


def over_limit(admitted: list[float], length: float, limit: int) -> list[float] | None:
    """A run of admissions inside one window of ``length`` that exceeds ``limit``, if any."""
    admitted = sorted(admitted)
    start = 0
    for end, t in enumerate(admitted):
        while admitted[start] + length <= t:
            start += 1
        if end - start + 1 > limit:
            return admitted[start : end + 1]
    return None


def play_fleet(
    *,
    limit: int,
    day_limit: int,
    replicas: int,
    running: int,
    kill_at: float,
    outage_s: float,
    notice_down: list[float],
    notice_up: list[float],
    keeps_history: bool,
    gap: float,
    extra: list[tuple[float, int]],
) -> tuple[list[float], list[tuple[float, bool]]]:
    """Play a fleet through one outage: (the admission times, every call as (time, admitted))."""
    running = min(running, replicas)
    windows = (Window("rpm", W, limit), Window("rpd", DAY, day_limit))
    back_at = kill_at + outage_s
    clock = Clock(0.0)
    daemons = [LocalShare(replicas, grace_s=GRACE, claim_trust_s=TRUST, clock=clock) for _ in range(running)]
    shared = SharedModel(windows, replicas, 2 * TRUST)
    admitted: list[float] = []
    calls: list[tuple[float, bool]] = []
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

    def came_back(me: LocalShare, t: float) -> None:
        backs = me.store_up()
        if not keeps_history:
            me.state_lost()  # the write-back's call reads the store's epoch first
        for back in backs:
            shared.record(back.amounts, back.reservation_id, t)
            me.written_back(back)

    for n, (t, i, kind) in enumerate(sorted(events)):
        clock.now = t
        me = daemons[i]
        if t >= back_at and not keeps_history and not wiped:
            shared.wipe()  # Redis came back empty
            wiped = True
        if kind == "down":
            me.store_down()
            continue
        if kind == "up":
            came_back(me, t)
            continue
        reachable = not (kill_at <= t < back_at)
        rid = f"r{n}"
        if t >= back_at and i in blip:  # the first call after a failure re-reads the epoch
            blip.discard(i)
            me.store_down()
            came_back(me, t)
        mode = me.mode("q", windows)
        ok = False
        if mode is Mode.LOCAL:
            ok = me.acquire("q", windows, [1, 1], 1.0, rid).admitted
        # Unreachable: the store call fails; the real code retries until the breaker opens.
        elif reachable and (mode is Mode.SHARED or me.acquire("q", windows, [1, 1], 1.0, rid).admitted):
            ok = shared.acquire(me, i, rid, t)
            if not ok and mode is Mode.BOTH:
                me.adjust("q", windows, rid, [0, 0])
        calls.append((t, ok))
        if ok:
            admitted.append(t)
    return admitted, calls


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 12),
    day_limit=st.integers(1, 60),
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
    day_limit: int,
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
    """Daemons admit from the shared windows (holding claims) until the store dies, notice
    the outage at different moments, admit from their claims and shares, notice the return
    at different moments (the store may come back empty), write back, recover and go on.
    Whatever the timings, no minute or day window ever holds more than its limit."""
    admitted, _ = play_fleet(
        limit=limit,
        day_limit=day_limit,
        replicas=replicas,
        running=running,
        kill_at=kill_at,
        outage_s=outage_s,
        notice_down=notice_down,
        notice_up=notice_up,
        keeps_history=keeps_history,
        gap=gap,
        extra=extra,
    )
    assert over_limit(admitted, W, limit) is None
    assert over_limit(admitted, DAY, day_limit) is None


@settings(max_examples=100, deadline=None)
@given(
    replicas=st.integers(1, 4),
    running=st.integers(1, 4),
    kill_at=st.floats(5, 25),
    outage_s=st.floats(0.5, 30),
    notice_down=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
    notice_up=st.lists(st.floats(0.0, 0.5), min_size=4, max_size=4),
    gap=st.floats(0.02, 0.5),
)
def test_a_stall_costs_about_its_length_never_a_window(
    replicas: int,
    running: int,
    kill_at: float,
    outage_s: float,
    notice_down: list[float],
    notice_up: list[float],
    gap: float,
) -> None:
    """Limits far above the traffic: a daemon that has been busy admits through an outage
    from its claim, and once the store is back (and the grace is over) every call is
    admitted again: no window-long (or day-long) lockout."""
    _, calls = play_fleet(
        limit=1_000_000,
        day_limit=10_000_000,
        replicas=replicas,
        running=running,
        kill_at=kill_at,
        outage_s=outage_s,
        notice_down=notice_down,
        notice_up=notice_up,
        keeps_history=True,
        gap=gap,
        extra=[],
    )
    back_at = kill_at + outage_s
    settled = back_at + max(notice_up) + GRACE
    assert all(ok for t, ok in calls if t >= settled)
    # In the outage, once each daemon has noticed it, its claim admits every call for as
    # long as the claim may be spent (TRUST after it was last granted, before the outage).
    noticed = kill_at + max(notice_down)
    # (Less a nanosecond: a call at the very instant the claim expires may go either way, and
    # the sum here rounds apart from the daemon's own by a last bit.)
    claim_spent = kill_at - gap * min(running, replicas) + TRUST - 1e-9
    assert all(ok for t, ok in calls if noticed < t < min(back_at, claim_spent))
