"""Provider quota policy: which windows a model has, what a call costs in each, and how
long to hold a model after the provider itself said 429.

Pure code: no I/O and no clock (``now`` is passed in). The store applies the windows
(:mod:`knowctl.policy.windows` for the arithmetic); the daemon's ``ProviderQuota`` wires
the two together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from knowctl.policy.priority import Priority, parse_shares
from knowctl.policy.tokens import TokenMode
from knowctl.policy.windows import Window

# Window names, as they appear in store keys, stats and metrics labels.
RPM, RPD, TPM, TPD = "rpm", "rpd", "tpm", "tpd"
WINDOW_NAMES = (RPM, RPD, TPM, TPD)
TOKEN_WINDOWS = frozenset({TPM, TPD})

# Answers for which the provider spent nothing of the quota: the credentials were refused
# (401, 403; the Gemini API says 400 API_KEY_INVALID for a bad key) or the model does not
# exist (404). Their reservations are given back, so calls with garbage credentials or
# made-up models cannot use up the quota of everyone else.
_UNCOUNTED_STATUSES = frozenset({401, 403, 404})


def provider_counted(status: int, body: bytes) -> bool:
    """Whether the provider's answer ``status`` / ``body`` spent its quota."""
    if status in _UNCOUNTED_STATUSES:
        return False
    return not (status == 400 and b"API_KEY_INVALID" in body)


@dataclass(frozen=True, slots=True)
class Limits:
    """One model's limits; None means unlimited."""

    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    tpd: int | None = None


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    """The quota settings, detached from pydantic so policy stays plain data
    (built by knowctl.daemon.config.quota_config)."""

    default: Limits = field(default_factory=Limits)
    models: Mapping[str, Limits] = field(default_factory=dict)
    minute_s: float = 60.0
    day_s: float = 86400.0
    day_tz: str | None = None
    token_mode: TokenMode = "input"  # noqa: S105 (not a secret)
    shares: Mapping[Priority, float] = field(default_factory=lambda: parse_shares(""))

    def limits(self, model: str) -> Limits:
        """The model's own limits, each unset one taken from the defaults."""
        own = self.models.get(model)
        if own is None:
            return self.default
        d = self.default
        return Limits(
            own.rpm if own.rpm is not None else d.rpm,
            own.rpd if own.rpd is not None else d.rpd,
            own.tpm if own.tpm is not None else d.tpm,
            own.tpd if own.tpd is not None else d.tpd,
        )

    def windows(self, model: str) -> tuple[Window, ...]:
        """The model's windows with a limit, in the order rpm, rpd, tpm, tpd; () = unlimited.

        Day windows roll over ``day_s`` seconds, or are calendar days in ``day_tz`` (the
        Gemini API resets daily quota at midnight Pacific time).
        """
        lim = self.limits(model)
        out: list[Window] = []
        for name, limit in ((RPM, lim.rpm), (RPD, lim.rpd), (TPM, lim.tpm), (TPD, lim.tpd)):
            if limit is None:
                continue
            if name in (RPM, TPM):
                out.append(Window(name, self.minute_s, limit))
            else:
                out.append(Window(name, self.day_s, limit, self.day_tz))
        return tuple(out)

    def share(self, priority: Priority) -> float:
        return self.shares[priority]


def has_token_window(windows: Sequence[Window]) -> bool:
    return any(w.name in TOKEN_WINDOWS for w in windows)


def amounts(windows: Sequence[Window], tokens: int, requests: int = 1) -> tuple[int, ...]:
    """What one call costs in each window: ``requests`` (usually 1) in request windows,
    ``tokens`` in token windows."""
    return tuple(tokens if w.name in TOKEN_WINDOWS else requests for w in windows)


def backoff_delay(streak: int, base_s: float, max_s: float) -> float:
    """Hold after the ``streak``-th upstream 429 in a row without RetryInfo: base * 2^(streak-1)."""
    if streak < 1:
        raise ValueError("streak counts 429s and starts at 1")
    # min() before the power would overflow: 2**1100 is not a float.
    exponent = min(streak - 1, 64)
    return min(max_s, base_s * math.pow(2.0, exponent))


def hold_delay(retry_delay: float | None, streak: int, base_s: float, max_s: float) -> float:
    """How long to hold a model after an upstream 429: the provider's RetryInfo delay when it
    gave a positive one (it knows when its quota frees), else exponential back-off."""
    if retry_delay is not None and math.isfinite(retry_delay) and retry_delay > 0:
        return retry_delay
    return backoff_delay(streak, base_s, max_s)


def never_fits(retry_after: float) -> bool:
    """The store's signal that a request exceeds its share of a limit outright."""
    return math.isinf(retry_after)


def refuse_at_once(retry_after: float, queue_timeout: float, tokens_may_return: bool) -> bool:
    """Whether waiting in the queue is pointless: the request can never fit, or it would fit
    only after the wait timeout and nothing but time can free capacity sooner (token windows
    can free early, when a call in flight turns out cheaper than reserved)."""
    if never_fits(retry_after):
        return True
    return retry_after > queue_timeout and not tokens_may_return


def iso_utc(epoch: float) -> str:
    """Epoch seconds as an ISO 8601 UTC timestamp with milliseconds (``...Z``)."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def window_stats(window: Window, used: int, reserved: int, reset_after: float, now: float) -> dict[str, Any]:
    """One window's entry of /api/quota/stats."""
    reset_after = max(0.0, reset_after)
    return {
        "limit": window.limit,
        "used": used,
        "reserved": reserved,
        "remaining": max(0, window.limit - used),
        "length_s": window.length_s,
        "calendar_tz": window.calendar_tz,
        "reset_after_s": round(reset_after, 3),
        "reset_at": iso_utc(now + reset_after),
    }
