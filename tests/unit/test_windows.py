"""Pure sliding-window arithmetic (knowctl.policy.windows), with the clock passed in."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knowctl.policy.windows import (
    Window,
    WindowLog,
    calendar_period,
    capacity,
    day_boundaries,
    local_midnight,
    try_admit,
)

LA = "America/Los_Angeles"


def at(tz: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp()


# --- capacity (priority headroom) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "share", "cap"),
    [(10, 1.0, 10), (10, 0.6, 6), (10, 0.65, 6), (100, 0.29, 29), (3, 0.5, 1), (1, 0.5, 0), (0, 1.0, 0)],
)
def test_capacity_is_floor_of_limit_times_share(limit: int, share: float, cap: int) -> None:
    assert capacity(limit, share) == cap


@pytest.mark.parametrize("share", [0.0, -0.1, 1.01, math.nan, math.inf])
def test_capacity_rejects_shares_outside_0_1(share: float) -> None:
    with pytest.raises(ValueError):
        capacity(10, share)


def test_window_validation() -> None:
    with pytest.raises(ValueError):
        Window("bad name", 60, 1)
    with pytest.raises(ValueError):
        Window("rpm", 0, 1)
    with pytest.raises(ValueError):
        Window("rpm", 60, -1)
    with pytest.raises(ValueError):
        Window("rpd", 86400, 1, "Mars/Olympus_Mons")


# --- calendar days --------------------------------------------------------------------------


def test_ordinary_pacific_day() -> None:
    now = at(LA, 2024, 6, 15, 13, 30)
    start, end = calendar_period(LA, now)
    assert start == at(LA, 2024, 6, 15, 0, 0)
    assert end == at(LA, 2024, 6, 16, 0, 0)
    assert end - start == 86400
    # 00:00 PDT is 07:00 UTC
    assert datetime.fromtimestamp(start, ZoneInfo("UTC")).hour == 7


def test_spring_forward_day_is_23_hours() -> None:
    now = at(LA, 2024, 3, 10, 23, 30)  # clocks jumped 02:00 -> 03:00 that morning
    start, end = calendar_period(LA, now)
    assert end - start == 23 * 3600
    assert end - now == 30 * 60
    assert start == at(LA, 2024, 3, 10, 0, 0)


def test_fall_back_day_is_25_hours() -> None:
    now = at(LA, 2024, 11, 3, 23, 30)  # 01:00-02:00 happened twice that morning
    start, end = calendar_period(LA, now)
    assert end - start == 25 * 3600
    assert end - now == 30 * 60
    # inside the repeated hour, both instants belong to the same day
    first = datetime(2024, 11, 3, 1, 30, tzinfo=ZoneInfo(LA), fold=0).timestamp()
    second = datetime(2024, 11, 3, 1, 30, tzinfo=ZoneInfo(LA), fold=1).timestamp()
    assert second - first == 3600
    assert calendar_period(LA, first) == calendar_period(LA, second) == (start, end)


def test_midnight_itself_starts_the_new_day() -> None:
    midnight = at(LA, 2024, 6, 16, 0, 0)
    assert calendar_period(LA, midnight)[0] == midnight
    assert calendar_period(LA, midnight - 1e-3)[1] == midnight


def test_zone_whose_dst_gap_swallows_midnight() -> None:
    # Chile springs forward at 00:00 -> 01:00: 2022-09-11 has no 00:00, its day starts at
    # the transition instant (04:00 UTC) and lasts 23 hours.
    tz = "America/Santiago"
    start, end = calendar_period(tz, at(tz, 2022, 9, 11, 12, 0))
    assert start == datetime(2022, 9, 11, 4, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    assert end - start == 23 * 3600


@settings(max_examples=300)
@given(
    now=st.floats(min_value=1.5e9, max_value=2.2e9, allow_nan=False),
    tz=st.sampled_from([LA, "Europe/London", "America/Santiago", "Asia/Kolkata", "UTC", "Pacific/Apia"]),
    skew=st.floats(min_value=-80000, max_value=80000),
)
def test_day_boundaries_pick_the_same_period_as_calendar_period(now: float, tz: str, skew: float) -> None:
    # What the Redis scripts do: the client (clock off by up to a day) sends midnights, the
    # server picks the period around its own time. It must agree with calendar_period.
    start, end = calendar_period(tz, now)
    assert start <= now < end
    assert 22 * 3600 <= end - start <= 26 * 3600
    days = day_boundaries(tz, now + skew)
    assert list(days) == sorted(days)
    assert max(b for b in days if b <= now) == start
    assert min(b for b in days if b > now) == end
    assert local_midnight(tz, datetime.fromtimestamp(start, ZoneInfo(tz)).date()) == start


# --- the log --------------------------------------------------------------------------------


def test_rolling_entry_leaves_exactly_length_after_it_was_recorded() -> None:
    w = Window("rpm", 60, 1)
    log = WindowLog()
    log.record("a", 1, 1000.0)
    assert log.trim(w, 1059.999) == 1
    assert log.trim(w, 1060.0) == 0  # window is (now - 60, now]
    assert len(log) == 0


def test_try_admit_records_everything_or_nothing() -> None:
    ws = [Window("rpm", 60, 10), Window("tpm", 60, 100)]
    logs = [WindowLog(), WindowLog()]
    v = try_admit(logs, ws, [1, 90], [10, 100], "a", 0.0)
    assert v.admitted and v.usage == (1, 90)
    v = try_admit(logs, ws, [1, 20], [10, 100], "b", 1.0)
    assert not v.admitted and v.blocked == ("tpm",) and v.usage == (1, 90)
    assert "b" not in logs[0] and "b" not in logs[1]
    assert v.retry_after == pytest.approx(59.0)


def test_zero_amount_does_not_block_but_is_recorded() -> None:
    ws = [Window("rpm", 60, 1), Window("tpm", 60, 10)]
    logs = [WindowLog(), WindowLog()]
    assert try_admit(logs, ws, [1, 0], [1, 10], "a", 0.0).admitted
    # rpm is full, but this call asks nothing of it
    assert try_admit(logs, ws, [0, 5], [1, 10], "b", 1.0).admitted
    assert "b" in logs[0] and logs[0].total == 1


def test_replayed_reservation_is_not_counted_twice() -> None:
    ws = [Window("rpm", 60, 5)]
    logs = [WindowLog()]
    assert try_admit(logs, ws, [1], [5], "same", 0.0).admitted
    v = try_admit(logs, ws, [1], [5], "same", 1.0)
    assert v.admitted and v.usage == (1,) and logs[0].total == 1


def test_cannot_ever_fit_gives_infinite_retry() -> None:
    ws = [Window("tpm", 60, 100)]
    v = try_admit([WindowLog()], ws, [61], [capacity(100, 0.6)], "a", 0.0)
    assert not v.admitted and v.retry_after == math.inf


def test_backward_clock_step_keeps_entries_ordered_and_longer() -> None:
    w = Window("rpm", 10, 2)
    log = WindowLog()
    log.record("a", 1, 100.0)
    log.record("b", 1, 95.0)  # the clock stepped back 5 s
    assert log.trim(w, 109.0) == 2
    assert log.trim(w, 110.0) == 0  # "b" was kept as if recorded at 100, not dropped at 105


def test_adjust_keeps_time_and_changes_total() -> None:
    w = Window("tpm", 60, 100)
    log = WindowLog()
    log.record("a", 80, 0.0)
    assert log.adjust("a", 20) and log.total == 20
    assert not log.adjust("missing", 5)
    assert log.trim(w, 59.0) == 20 and log.trim(w, 60.0) == 0


# --- properties -----------------------------------------------------------------------------

arrivals = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=3.0, allow_nan=False),  # gap since previous arrival
        st.integers(min_value=0, max_value=12),  # tokens
        st.sampled_from([1.0, 0.6, 0.3]),  # priority share
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    events=arrivals, length=st.sampled_from([1.0, 2.5, 10.0]), rpm=st.integers(1, 8), tpm=st.integers(1, 40)
)
def test_no_window_of_its_length_ever_holds_more_than_the_limit(
    events: list[tuple[float, int, float]], length: float, rpm: int, tpm: int
) -> None:
    ws = [Window("req", length, rpm), Window("tok", length * 2, tpm)]
    logs = [WindowLog(), WindowLog()]
    admitted: list[tuple[float, int]] = []
    now = 0.0
    for n, (gap, tokens, share) in enumerate(events):
        now += gap
        caps = [capacity(w.limit, share) for w in ws]
        v = try_admit(logs, ws, [1, tokens], caps, f"r{n}", now)
        if v.admitted:
            admitted.append((now, tokens))
        else:
            # a refusal must be justified by some window at this moment
            assert logs[0].total + 1 > caps[0] or logs[1].total + tokens > caps[1]
    # Brute force: the busiest window of each length ends at some admitted arrival. An entry
    # counts until its leave time t + length, the float sum WindowLog compares (``end -
    # length < t`` rounds differently at the exact boundary).
    for end, _ in admitted:
        in_req = [a for t, a in admitted if t <= end < t + length]
        in_tok = [a for t, a in admitted if t <= end < t + 2 * length]
        assert len(in_req) <= rpm
        assert sum(in_tok) <= tpm


@settings(max_examples=300, deadline=None)
@given(events=arrivals, length=st.sampled_from([1.0, 5.0]), limit=st.integers(1, 30), ask=st.integers(1, 30))
def test_retry_after_is_exact(
    events: list[tuple[float, int, float]], length: float, limit: int, ask: int
) -> None:
    w = Window("tok", length, limit)
    log = WindowLog()
    now = 0.0
    for n, (gap, tokens, _) in enumerate(events):
        now += gap
        try_admit([log], [w], [tokens], [limit], f"r{n}", now)
    v = try_admit([log], [w], [ask], [limit], "probe", now)
    if v.admitted:
        return
    if ask > limit:
        assert v.retry_after == math.inf
        return
    assert 0 < v.retry_after <= length + 1e-9  # rounded up by a few ulps at most
    # nothing else arrives: just before the retry time it still does not fit, at it, it does
    early = now + v.retry_after - 1e-6
    if early > now:
        assert not try_admit([log], [w], [ask], [limit], "early", early).admitted
    assert try_admit([log], [w], [ask], [limit], "late", now + v.retry_after).admitted


@settings(max_examples=150, deadline=None)
@given(
    start=st.sampled_from(
        [at(LA, 2024, 3, 9, 18, 0), at(LA, 2024, 11, 2, 18, 0), at("America/Santiago", 2022, 9, 10, 20, 0)]
    ),
    gaps=st.lists(st.floats(min_value=0, max_value=4 * 3600), min_size=1, max_size=80),
    limit=st.integers(1, 6),
)
def test_calendar_window_never_exceeds_limit_in_any_local_day(
    start: float, gaps: list[float], limit: int
) -> None:
    tz = LA if start != at("America/Santiago", 2022, 9, 10, 20, 0) else "America/Santiago"
    w = Window("rpd", 86400, limit, tz)
    log = WindowLog()
    per_day: dict[object, int] = {}
    now = start
    for n, gap in enumerate(gaps):
        now += gap
        v = try_admit([log], [w], [1], [limit], f"r{n}", now)
        day = datetime.fromtimestamp(now, ZoneInfo(tz)).date()
        if v.admitted:
            per_day[day] = per_day.get(day, 0) + 1
        else:
            # refused only when today is full; retry lands exactly on the next local midnight
            assert per_day.get(day, 0) == limit
            nxt = datetime.fromtimestamp(now + v.retry_after, ZoneInfo(tz))
            assert (nxt.hour, nxt.minute, nxt.second) in {(0, 0, 0), (1, 0, 0)}  # 1:00 only for a gap
            assert nxt.date() == day + timedelta(days=1)
    assert all(count <= limit for count in per_day.values())
