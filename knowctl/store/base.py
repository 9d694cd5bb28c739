"""The store's feature protocols (what a component may ask of shared state), the Store every
backend implements, and the values they return.

Backends differ only in where state lives; the semantics (see knowctl.policy.windows) are
the same, and tests/store/test_store.py runs every test against each backend. A new feature
of the store is a new protocol here, one Lua script on Redis (knowctl/store/lua) whose keys
come from :mod:`knowctl.store.keys`, and the same test run against both backends.
"""

from __future__ import annotations

import functools
import math
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from knowctl.policy.windows import Window
from knowctl.store.keys import scope_tag

__all__ = [
    "Admission",
    "Candidate",
    "Choice",
    "Health",
    "Keys",
    "LeaseRead",
    "Leases",
    "Notifications",
    "Records",
    "Store",
    "StoreUnavailable",
    "Subscription",
    "Tallies",
    "Window",
    "WindowUsage",
    "Windows",
    "check_candidates",
    "check_ttl",
    "check_window_call",
    "redact_url",
]


class StoreUnavailable(Exception):
    """The store did not answer in time or at all. Callers degrade; they never hang."""


@dataclass(frozen=True, slots=True)
class Announcement:
    """A message to publish after an adjustment, only if ``flag`` (a key of the same scope,
    so of the same Cluster slot) exists: "capacity came back", sent only while some daemon
    says it has callers waiting for it, instead of to every daemon after every call."""

    flag: str
    channel: str
    message: bytes


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of :meth:`Store.acquire`; tuples are per window, in the order given."""

    admitted: bool
    # 0 when admitted. When refused: seconds until enough recorded usage has left every
    # blocking window for this request to fit (math.inf if it can never fit at this share).
    retry_after: float
    # Usage after the call (including this request when admitted).
    usage: tuple[int, ...]
    limits: tuple[int, ...]
    # Seconds until usage next drops: the oldest entry leaves a rolling window (0 if it is
    # empty), or the next local midnight for a calendar window.
    reset_after: tuple[float, ...]
    # Names of the windows that refused the request (empty when admitted).
    blocked: tuple[str, ...] = ()
    # With a Claim: the units per window this daemon now holds for a store outage.
    claimed: tuple[int, ...] = ()


# The admission of a candidate ``acquire_any`` did not look at: no usage, nothing changed.
NOT_LOOKED = Admission(False, 0.0, (), (), ())


@dataclass(frozen=True, slots=True)
class Candidate:
    """One scope a reservation may be admitted in (one deployment that serves the model): its
    windows and what the call costs in each. Candidates are tried in the order given."""

    scope: str
    windows: Sequence[Window]
    amounts: Sequence[int]


@dataclass(frozen=True, slots=True)
class Choice:
    """The outcome of :meth:`Windows.acquire_any`: the candidate that admitted the call (its
    index, None when none did) and every candidate's admission, in the order given. Only the
    chosen one recorded anything; a refused choice's ``retry_after`` is the soonest any
    candidate fits."""

    chosen: int | None
    admissions: tuple[Admission, ...]
    retry_after: float

    @property
    def admitted(self) -> bool:
        return self.chosen is not None


@dataclass(frozen=True, slots=True)
class Claim:
    """Ask :meth:`Store.acquire` to keep a claim for ``claimant`` (one daemon): part of what
    each window has left, which other daemons' admissions must leave free, so the claimant
    can admit up to it on its own while the store does not answer. Its size is
    floor((limit - used - others' claims) / (max(divisor, daemons claiming) + 1)): one part
    stays free for daemons that hold no claim yet. The store forgets it ``ttl_s`` after it
    was last set (the claimant trusts it for less)."""

    claimant: str
    divisor: int
    ttl_s: float


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """One window's state for stats: nothing is recorded by reading it."""

    name: str
    used: int
    limit: int
    entries: int
    reset_after: float


@dataclass(frozen=True, slots=True)
class LeaseRead:
    """What :meth:`Store.read_or_lease` found and did."""

    value: bytes | None  # the entry, fresh or not; None when absent
    fresh: bool  # its remaining TTL exceeds the stale part (no lease was asked for)
    leased: bool  # the lease is now the caller's


class Subscription(AsyncIterator[bytes], ABC):
    """Messages of one channel. ``async with`` (or :meth:`start`) subscribes before returning,
    so a message published afterwards is never missed; plain iteration subscribes lazily."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Subscription:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# --- feature protocols: each component is typed against the few it uses -------------------
# Every backend implements them all (class Store below); a component names only what it needs,
# so a reader sees its reach in its signature and a new backend knows what each feature costs.
# Every method is bounded by the store's timeout and raises StoreUnavailable when the backend
# cannot answer; none of them hangs.


class Health(Protocol):
    """Whether the store answers, and where it lives."""

    backend: ClassVar[str]  # "memory" or "redis": a shared store is any but memory

    @property
    def available(self) -> bool:
        """False while the store is known to be down (its breaker is open): callers then
        degrade at once instead of asking it."""
        ...

    def on_availability(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(up)`` whenever the store goes down or comes back."""

    def on_state_lost(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` when the store is found to have lost its state."""

    @abstractmethod
    def describe(self) -> str:
        """Where the state lives, safe to print: passwords are replaced by ``***``."""

    @abstractmethod
    async def ping(self) -> float:
        """Round-trip time in seconds."""

    @abstractmethod
    async def close(self) -> None: ...


class Keys(Protocol):
    """Plain keys with a TTL (names from knowctl.store.keys), scans and conditional writes."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (> 0)."""

    @abstractmethod
    async def delete(self, *keys: str) -> int:
        """Remove keys; return how many existed."""

    @abstractmethod
    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        """Store ``value`` for ``ttl`` seconds only if ``key`` does not exist; True if stored."""

    @abstractmethod
    async def delete_if_equal(self, key: str, value: bytes) -> bool:
        """Remove ``key`` only while it still holds ``value`` (releasing one's own lease)."""

    @abstractmethod
    async def scan_keys(self, match: str, cursor: int = 0, count: int = 1000) -> tuple[int, list[str]]:
        """One step of a key scan (never KEYS): (next cursor, keys matching the glob
        ``match``); cursor 0 ends the scan. ``match`` is a glob whose only special characters
        are ``*`` and ``?`` (see :func:`check_match`). A key may be returned more than once;
        keys that exist for the whole scan are returned at least once. Long jobs are many
        short calls."""

    @abstractmethod
    async def unlink(self, *keys: str) -> int:
        """Remove keys without blocking the server on large values; return how many existed."""


class Windows(Protocol):
    """Sliding-window admission (semantics: knowctl.policy.windows)."""

    @abstractmethod
    async def acquire(
        self,
        scope: str,
        windows: Sequence[Window],
        amounts: Sequence[int],
        *,
        share: float = 1.0,
        reservation_id: str,
        claim: Claim | None = None,
    ) -> Admission:
        """One atomic step: admit iff ``usage_i + amounts[i] <= floor(limit_i * share)`` for
        every window with ``amounts[i] > 0``, and if so record the amounts in every window.
        With ``claim``, other daemons' claims count as used, and the claimant's is set anew.

        ``reservation_id`` must be unique per request (a uuid4); an id already recorded is
        treated as a replay of the same request and is not recorded twice.
        """

    @abstractmethod
    async def acquire_any(
        self,
        candidates: Sequence[Candidate],
        *,
        share: float = 1.0,
        reservation_id: str,
        claim: Claim | None = None,
        fresh: bool = False,
    ) -> Choice:
        """``acquire`` over several scopes in one atomic step: the call is admitted and recorded
        in at most one, the first admissible in the order given (the caller's preference).
        Candidates after it are not looked at: their admissions are ``NOT_LOOKED``. A replay
        is admitted where it was recorded; ``fresh`` says the id was never sent before (so
        there is no replay to look for, which saves the store a lookup per window). With
        ``claim``, the claimant's claim is set anew in every candidate looked at. Every
        candidate's scope must share one hash tag (knowctl.store.keys.quota_scope)."""

    @abstractmethod
    async def record(
        self, scope: str, windows: Sequence[Window], amounts: Sequence[int], *, reservation_id: str
    ) -> None:
        """Record a reservation in every window whatever they hold (admissions made while the
        store was away, written back so its windows count them); a repeated id is a no-op."""

    @abstractmethod
    async def adjust(
        self,
        scope: str,
        windows: Sequence[Window],
        reservation_id: str,
        amounts: Sequence[int],
        *,
        announce: Announcement | None = None,
    ) -> None:
        """Set an earlier reservation's amounts (estimate -> actual), keeping its time.
        Windows the reservation has already left are untouched. ``announce``: in the same
        step, publish its message if its flag key exists."""

    @abstractmethod
    async def usage(self, scope: str, windows: Sequence[Window]) -> list[WindowUsage]: ...


class Records(Protocol):
    """Small admin datasets (gateway keys) kept as hashes without expiry. Not for the hot
    path: readers cache what they read."""

    @abstractmethod
    async def hash_set(self, key: str, field: str, value: bytes) -> None:
        """Set one field of the hash ``key`` (created on first use, never expires)."""

    @abstractmethod
    async def hash_get(self, key: str, field: str) -> bytes | None: ...

    @abstractmethod
    async def hash_get_all(self, key: str) -> dict[str, bytes]:
        """Every field of the hash ``key`` ({} when it does not exist)."""

    @abstractmethod
    async def hash_delete(self, key: str, *fields: str) -> int:
        """Remove fields; return how many existed."""


class Leases(Protocol):
    """Cache entries and their coalescing leases: the hot path of a miss. One round trip reads
    the entry and takes its lease, one stores the answer, releases the lease and tells
    waiters. ``entry``, ``lease`` and ``watch`` share one hash tag (knowctl.store.keys), so on
    Redis each is one Lua script."""

    @abstractmethod
    async def read_or_lease(
        self, entry: str, lease: str, watch: str, token: bytes, lease_ttl: float, stale_ttl: float | None
    ) -> LeaseRead:
        """One atomic step: read ``entry``; unless it is fresh (its remaining TTL exceeds
        ``stale_ttl``: entries are written for their fresh time plus ``stale_ttl``; None: never
        fresh), take ``lease`` with ``token`` for ``lease_ttl`` seconds if it is free, else set
        ``watch`` (same TTL) so that the holder's :meth:`finish_lease` announces its end."""

    @abstractmethod
    async def finish_lease(
        self,
        lease: str,
        watch: str,
        token: bytes,
        channel: str,
        message: bytes,
        *,
        entry: str | None = None,
        value: bytes = b"",
        ttl: float = 0.0,
    ) -> bool:
        """One atomic step: store ``value`` under ``entry`` for ``ttl`` seconds (when ``entry``
        is given), remove ``lease`` if it still holds ``token``, and publish ``message`` on
        ``channel`` only if ``watch`` exists (then removed): nobody waits, nothing is sent.
        True if the lease was still ours."""


class Tallies(Protocol):
    """Decaying counts per member (topic request counts)."""

    @abstractmethod
    async def tally_add(self, key: str, counts: Mapping[str, int], ttl: float) -> None:
        """Add ``counts`` to the members of the tally ``key``; the tally expires ``ttl`` seconds
        after its last update."""

    @abstractmethod
    async def tally_top(self, key: str, limit: int) -> list[tuple[str, int]]:
        """The ``limit`` largest members of the tally ``key``, largest first."""


class Notifications(Protocol):
    """Pub/sub between daemons: fire and forget, for hints (a lost message costs a poll)."""

    @abstractmethod
    async def publish(self, channel: str, message: bytes) -> None: ...

    @abstractmethod
    def subscribe(self, channel: str) -> Subscription: ...


class Store(Health, Keys, Windows, Records, Leases, Tallies, Notifications, ABC):
    """Shared state: every feature protocol, as one backend implements it."""

    # A store without a circuit breaker is always available and never reports.
    @property
    def available(self) -> bool:
        return True

    def on_availability(self, listener: Callable[[bool], None]) -> None:
        pass

    def on_state_lost(self, listener: Callable[[], None]) -> None:
        pass

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def check_window_call(
    scope: str, windows: Sequence[Window], amounts: Sequence[int] | None, reservation_id: str | None
) -> None:
    """Argument checks shared by the backends, so both refuse the same calls."""
    _check_windows(scope, tuple(windows))
    if amounts is not None:
        if len(amounts) != len(windows):
            raise ValueError("one amount per window is required")
        for a in amounts:
            if isinstance(a, bool) or not isinstance(a, int) or a < 0:
                raise ValueError(f"amounts must be integers >= 0, got {a!r}")
    if reservation_id is not None and not reservation_id:
        raise ValueError("reservation_id must not be empty")


@functools.lru_cache(maxsize=4096)  # a caller's or a lane's windows recur on every call
def _check_windows(scope: str, windows: tuple[Window, ...]) -> None:
    if not scope:
        raise ValueError("scope must not be empty")
    if not windows:
        raise ValueError("at least one window is required")
    names = [w.name for w in windows]
    if len(set(names)) != len(names):
        # Two windows of one name would share keys and count each request twice.
        raise ValueError(f"window names must be unique: {names}")


def check_candidates(candidates: Sequence[Candidate], reservation_id: str) -> None:
    """Argument checks of ``acquire_any``: one script must reach every candidate's keys."""
    if not candidates:
        raise ValueError("at least one candidate is required")
    for c in candidates:
        check_window_call(c.scope, c.windows, c.amounts, reservation_id)
    if len(candidates) > 1 and len({scope_tag(c.scope) for c in candidates}) > 1:
        raise ValueError("candidates must share one hash tag (the deployments of one model)")


def check_ttl(ttl: float) -> None:
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError("ttl must be a positive number of seconds")


_SECRET_PARAMS = frozenset(
    {"password", "pass", "passwd", "secret", "token", "ssl_password", "sentinel_password"}
)


def redact_url(url: str) -> str:
    """``url`` with any password (userinfo or query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable store URL>"  # never echo a URL we cannot take apart safely
    # Split the userinfo off by hand: cluster and sentinel URLs list several host:port
    # pairs, which urlsplit's .port and .password cannot take apart.
    netloc = parts.netloc
    userinfo, at, hostpart = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostpart}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_MATCH_SPECIAL = frozenset("[]\\^")


def check_match(match: str) -> str:
    """Refuse scan patterns with glob syntax beyond ``*`` and ``?``, so both backends match
    alike and no character class reaches Redis."""
    if not match or any(c in _MATCH_SPECIAL for c in match):
        raise ValueError(f"scan patterns allow only '*' and '?' as globs: {match!r}")
    return match


def match_regex(match: str) -> re.Pattern[str]:
    """The regular expression of a :func:`check_match` glob, matching whole keys."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in check_match(match)]
    return re.compile("".join(parts), re.DOTALL)
