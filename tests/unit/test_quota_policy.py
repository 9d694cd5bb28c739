"""Provider quota policy (pure): windows per model, amounts, back-off, refusal rules, stats.

The window arithmetic itself (never more than the limit in any span of the window's length)
is proven in tests/unit/test_windows.py; here a property checks it end to end through the
windows this policy builds, with priority shares, on an injected clock.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knowctl.daemon.config import quota_config
from knowctl.policy import quota as qp
from knowctl.policy.priority import Priority
from knowctl.policy.windows import WindowLog, capacity, try_admit
from knowctl.settings import Settings


def config(**values: Any) -> qp.QuotaConfig:
    return quota_config(Settings(**values))


def test_unset_limits_mean_no_windows() -> None:
    assert config().windows("gemini-2.5-flash") == ()


def test_defaults_apply_to_every_model_and_per_model_values_override() -> None:
    cfg = config(
        quota_rpm=10,
        quota_tpd=1000,
        quota_minute_s=5,
        quota_day_s=50,
        quota_models={"pro": {"rpm": 2, "tpm": 300}},
    )
    flash = cfg.windows("flash")
    assert [(w.name, w.limit, w.length_s, w.calendar_tz) for w in flash] == [
        ("rpm", 10, 5, None),
        ("tpd", 1000, 50, None),
    ]
    pro = cfg.windows("pro")
    assert [(w.name, w.limit) for w in pro] == [("rpm", 2), ("tpm", 300), ("tpd", 1000)]
    assert qp.has_token_window(pro) and not qp.has_token_window(cfg.windows("x")[:1])


def test_calendar_days() -> None:
    cfg = config(quota_rpd=100, quota_day_tz="America/Los_Angeles")
    (rpd,) = cfg.windows("m")
    assert rpd.calendar_tz == "America/Los_Angeles"


def test_amounts_and_shares() -> None:
    cfg = config(quota_rpm=10, quota_tpm=100, priority_shares="LOW=0.5,MEDIUM=0.8")
    assert qp.amounts(cfg.windows("m"), 42) == (1, 42)
    assert cfg.share(Priority.LOW) == 0.5
    assert cfg.share(Priority.MEDIUM) == 0.8
    assert cfg.share(Priority.CRITICAL) == 1.0
    assert cfg.token_mode == "input"


def test_backoff_doubles_up_to_the_maximum() -> None:
    assert [qp.backoff_delay(n, 1.0, 10.0) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert qp.backoff_delay(10_000, 1.0, 60.0) == 60.0  # no overflow
    with pytest.raises(ValueError):
        qp.backoff_delay(0, 1.0, 10.0)


def test_hold_prefers_the_providers_retry_delay() -> None:
    assert qp.hold_delay(15.2, 3, 1.0, 60.0) == 15.2
    assert qp.hold_delay(None, 3, 1.0, 60.0) == 4.0
    assert qp.hold_delay(0.0, 1, 1.0, 60.0) == 1.0  # "0s" would mean hammering the provider
    assert qp.hold_delay(math.nan, 2, 1.0, 60.0) == 2.0


def test_when_queueing_is_pointless() -> None:
    assert qp.refuse_at_once(math.inf, 30, True)
    assert qp.refuse_at_once(31, 30, False)
    assert not qp.refuse_at_once(31, 30, True)  # a reconciliation may return tokens sooner
    assert not qp.refuse_at_once(29, 30, False)


def test_window_stats() -> None:
    (w,) = config(quota_rpm=10).windows("m")
    entry = qp.window_stats(w, 12, 3, 2.5, 1_700_000_000.0)
    assert entry["remaining"] == 0
    assert entry["reserved"] == 3
    assert entry["reset_after_s"] == 2.5
    assert entry["reset_at"] == "2023-11-14T22:13:22.500Z"


# --- end to end through WindowLog: the invariant with priorities and reconciliation ---------

arrival = st.tuples(
    st.floats(min_value=0, max_value=3, allow_nan=False),  # gap since the previous request
    st.sampled_from(list(Priority)),
    st.integers(min_value=1, max_value=60),  # reserved tokens
    st.integers(min_value=0, max_value=60),  # actual tokens after the call
)


@settings(max_examples=200, deadline=None)
@given(rpm=st.integers(1, 8), tpm=st.integers(60, 200), arrivals=st.lists(arrival, max_size=60))
def test_no_window_ever_holds_more_than_its_limit(
    rpm: int, tpm: int, arrivals: list[tuple[float, Priority, int, int]]
) -> None:
    cfg = config(quota_rpm=rpm, quota_tpm=tpm, quota_minute_s=5)
    windows = cfg.windows("m")
    logs = [WindowLog() for _ in windows]
    admitted: list[tuple[float, int]] = []  # (time, final tokens)
    now = 0.0
    for i, (gap, priority, reserved, actual) in enumerate(arrivals):
        now += gap
        caps = [capacity(w.limit, cfg.share(priority)) for w in windows]
        verdict = try_admit(logs, windows, qp.amounts(windows, reserved), caps, f"r{i}", now)
        if not verdict.admitted:
            continue
        # Usage counted at admission never passes the priority's share of the limit.
        assert all(u <= c for u, c in zip(verdict.usage, caps, strict=True))
        final = min(actual, reserved)  # reconciled down (up would be the estimate error)
        for log in logs:
            log.adjust(f"r{i}", 1 if log is logs[0] else final)
        admitted.append((now, final))
    # Brute force: every span of the window's length, starting at any admission.
    for start, _ in admitted:
        inside = [t for t in admitted if start <= t[0] < start + 5]
        assert len(inside) <= rpm
        assert sum(tok for _, tok in inside) <= tpm
