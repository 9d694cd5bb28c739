"""Who is calling, and how much they may call: the ``Callers`` component of the pipeline.

- keys mode: a knowctl-issued gateway key (``x-goog-api-key``, ``?key=`` or ``Authorization:
  Bearer``) names a user and a tier; the caller's credential is removed from the request so
  it never reaches Google, and the gateway's own credentials go upstream;
- passthrough: callers bring Google credentials, which are forwarded. A credential this
  daemon has seen succeed upstream (``upstream_answered``) is "verified": its user is a hash
  of it, with limits of its own. Until then it is unverified and counts as its client
  address (anonymous: the address's windows, priority cap and access-log name), so made-up
  credentials buy no fresh limits and leave nothing in the store. Each daemon verifies on
  its own (an in-process LRU with an expiry), so a credential's first call on another
  daemon counts against its address again. A call with no credential Google would read is
  anonymous and never cached;
- anonymous: the client address (``X-Forwarded-For`` believed only from trusted proxies).

Callers the gateway has not authenticated (anonymous, unverified) ask for at most
``unauthenticated_max_priority``. Each kind of caller counts in its own store namespace
(``knowctl.store.keys.caller_scope``).

Per-user (and optional per-IP) sliding windows are counted in the store, one ``acquire``
per scope; while the store is down (its breaker is open) and while it recovers they count
against this daemon's share of each limit (``degraded.py``: 1/max_replicas, each window
starting as if full at the outage), and key lookups are answered from what this daemon has
seen.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from knowctl.daemon.callers.keys import KeyBook
from knowctl.daemon.context import CallContext
from knowctl.daemon.contracts import CallRefused
from knowctl.daemon.ids import unique_id
from knowctl.daemon.lru import LRU
from knowctl.daemon.windows.store import FailoverWindows
from knowctl.policy import callers as policy
from knowctl.policy.callers import IpNetwork
from knowctl.policy.identity import Identity, IdentityKind
from knowctl.policy.priority import Priority
from knowctl.store import Admission, Health, Notifications, Records, StoreUnavailable, Window, Windows, keys

if TYPE_CHECKING:
    pass

log = logging.getLogger("knowctl.callers")

# Retry-After of a refusal while the store is overloaded (failing, but not down).
STORE_BUSY_RETRY_S = 1.0
# Pass-through credentials seen to succeed upstream, per daemon: the most remembered, and for
# how long after their last success (a credential revoked at Google drops out within this).
VERIFIED_MAX = 10_000
VERIFIED_TTL_S = 3600.0
IP_POLICY_PREFIX = "ip-"


class CallersStore(Health, Windows, Records, Notifications, Protocol):
    """What the callers need of the store: per-caller windows and the gateway keys."""


class CallersConfigError(RuntimeError):
    """Settings that would make the gateway unsafe or useless; refused at start-up."""


@dataclass(frozen=True, slots=True)
class Tier:
    """A named tier: the per-user windows of its keys and their priority cap (a name)."""

    windows: tuple[Window, ...]
    max_priority: str | None = None


@dataclass(frozen=True, slots=True)
class CallersConfig:
    """What the callers need of the settings (built by knowctl.daemon.config.callers_config)."""

    mode: str  # the auth mode in force: keys, passthrough or anonymous
    holds_credentials: bool  # the gateway calls Google with credentials of its own
    simulate: bool
    max_replicas: int
    store_timeout: float
    trusted_proxies: tuple[IpNetwork, ...]
    user_windows: tuple[Window, ...]
    ip_windows: tuple[Window, ...]
    tiers: Mapping[str, Tier]
    unauthenticated_max_priority: Priority
    cache_scope: str  # shared, user or tier


class CallerRegistry:
    """Implements ``knowctl.daemon.contracts.Callers``; also owns the key admin routes."""

    def __init__(self, config: CallersConfig, store: CallersStore) -> None:
        self.config = config
        self.mode = config.mode
        self._holds_credentials = config.holds_credentials
        self._store = store
        # The same shared-or-local windows as the provider quota, on the user and IP scopes,
        # each daemon holding its share (limit / max_replicas) while the store is down. Unlike
        # the provider's quota, the local windows start EMPTY: per-user limits keep callers
        # fair, they are no contract with Google, and starting them full would refuse every
        # user for a whole window (a day, with a daily limit) after any store blip. The cost
        # is bounded: at most one extra window's worth of a user's limit, once per outage.
        self._windows = FailoverWindows(
            store,
            self._spawn,
            replicas=config.max_replicas,
            timeout=config.store_timeout,
            start_full=False,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._trusted = config.trusted_proxies
        self._user_windows = config.user_windows
        self._ip_windows = config.ip_windows
        self._tier_windows = {name: t.windows for name, t in config.tiers.items()}
        self._policy_headers: dict[str | None, bytes] = {}
        self._unauthenticated_cap = config.unauthenticated_max_priority
        # cred- name -> True; entries are 1 "byte" each, so max_bytes bounds nothing more.
        self._verified: LRU[bool] = LRU(VERIFIED_MAX, VERIFIED_MAX)
        self.keys = KeyBook(store, store_usable=self.store_usable, store_failed=self.store_failed)

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.mode == "keys" and not self._holds_credentials and not self.config.simulate:
            # Callers present gateway keys, which Google would refuse (and must never see);
            # with no credentials of our own every call would fail upstream. Say so now.
            raise CallersConfigError(
                "KNOWCTL_AUTH_MODE=keys needs Google credentials of the gateway's own "
                "(KNOWCTL_GOOGLE_API_KEY or KNOWCTL_GOOGLE_CREDENTIALS); without them use "
                "KNOWCTL_AUTH_MODE=passthrough"
            )
        if self.mode == "keys":
            await self.keys.start(wait_s=2 * self.config.store_timeout)
        limits = ",".join(f"{w.limit}/{w.name}" for w in self._user_windows) or "none"
        log.info("callers: auth mode %s, per-user limits %s", self.mode, limits)

    async def close(self) -> None:
        await self.keys.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- store health -------------------------------------------------------------------------
    def store_usable(self) -> bool:
        return self._store.available

    def store_failed(self, exc: StoreUnavailable) -> None:
        # The store's breaker logs the outage once; one line per failed call would flood.
        log.debug("callers: store call failed: %s", exc)

    # --- identify -----------------------------------------------------------------------------
    def client_ip(self, ctx: CallContext) -> str:
        forwarded = [v for k, v in ctx.headers if k == "x-forwarded-for"] if self._trusted else []
        return policy.client_address(ctx.client_ip, forwarded, self._trusted) or "unknown"

    async def identify(self, ctx: CallContext) -> Identity:
        internal = ctx.notes.internal
        if internal:
            # The gateway's own calls (topic refresh, prewarm): only the daemon writes notes
            # (knowctl.daemon.context), never from client input.
            return Identity(user=f"internal.{internal}", kind="internal", cache_scope="shared")
        if self.mode == "anonymous":
            return self._anonymous(ctx, self._cache_scope("anonymous", self.client_ip(ctx), None))
        if self.mode == "passthrough":
            return self._identify_passthrough(ctx)
        key = policy.presented_credential(ctx.header, ctx.query)
        if key is None and ctx.notes.topic is not None:
            # GET /topics/... is public (browsers, CDNs): without a key it is the address
            # (topic answers have a cache scope of their own).
            return self._anonymous(ctx, None)
        return await self._identify_key(ctx, key)

    def _anonymous(
        self, ctx: CallContext, cache_scope: str | None, credential: str | None = None
    ) -> Identity:
        return Identity(
            user=self.client_ip(ctx),
            kind="anonymous",
            max_priority=self._unauthenticated_cap,
            cache_scope=cache_scope,
            credential=credential,
        )

    def _identify_passthrough(self, ctx: CallContext) -> Identity:
        credentials = policy.presented_credentials(ctx.headers, ctx.query)
        if not credentials:
            # Google will refuse it (or it reaches an upstream that needs none): the address,
            # and no cache, since nothing tells this caller from any other.
            return self._anonymous(ctx, None)
        name = policy.credential_identity(credentials)
        if self._verified.get(name) is None:
            # Not seen to succeed: what it may do is its address's, and its answers (if any
            # come) are its own.
            return self._anonymous(ctx, name, credential=name)
        return Identity(user=name, kind="passthrough", cache_scope=name, credential=name)

    def upstream_answered(self, ctx: CallContext, status: int) -> None:
        """The upstream answered ``ctx``'s call with ``status``: a success verifies the
        pass-through credential it carried (for ``VERIFIED_TTL_S`` from now); a 401 or 403
        forgets it at once (revoked, expired). Pure memory, no I/O: called on every upstream
        answer."""
        identity = ctx.identity
        if identity is None or identity.credential is None:
            return
        if 200 <= status < 300:
            self._verified.put(identity.credential, True, 1, VERIFIED_TTL_S)
        elif status in (401, 403):
            self._verified.pop(identity.credential)

    def _cache_scope(self, kind: str, user: str, tier: str | None) -> str:
        """The cache scope of a key user or an anonymous-mode address under ``cache_scope``."""
        setting = self.config.cache_scope
        if setting == "shared":
            return "shared"
        if kind == "key":
            return f"user:{user}" if setting == "user" else f"tier:{tier or '-'}"
        return f"addr:{user}"  # no tier to share: an address keeps its own

    async def _identify_key(self, ctx: CallContext, key: str | None) -> Identity:
        # The caller's credential is a gateway key: it must never travel upstream, even for a
        # family the gateway holds no credential of its own for; nor may the caller's browser
        # state (cookies) or its choice of billed project, on a call made with ours.
        kept, ctx.query = policy.without_credentials(ctx.headers, ctx.query)
        ctx.headers[:] = kept
        for name in policy.STRIPPED_HEADERS:
            ctx.header.pop(name, None)
        if key is None:
            raise CallRefused(
                401,
                "Missing gateway key: send your knowctl key as x-goog-api-key, ?key= or "
                "Authorization: Bearer.",
            )
        try:
            record = await self.keys.lookup(policy.digest(key))
        except StoreUnavailable:
            raise CallRefused(
                503, "The gateway cannot check this key right now (its store is unavailable); retry shortly."
            ) from None
        if record is None:
            raise CallRefused(401, "API key not valid. Please pass a valid knowctl gateway key.")
        if record.revoked is not None:
            raise CallRefused(403, f"Gateway key {record.key_id} has been revoked.")
        user = record.user
        session = ctx.header.get("x-knowctl-user", "").strip()
        if session and record.trusted:
            try:
                user = policy.sub_user(record.user, session)
            except ValueError as exc:
                raise CallRefused(400, f"X-Knowctl-User: {exc}") from None
        tier = self.config.tiers.get(record.tier) if record.tier else None
        cap_name = record.max_priority or (tier.max_priority if tier else None)
        cap = Priority.parse(cap_name) if cap_name else None
        return Identity(
            user=user,
            kind="key",
            tier=record.tier,
            max_priority=cap,
            cache_scope=self._cache_scope("key", user, record.tier),
        )

    # --- limits -------------------------------------------------------------------------------
    def user_windows(self, tier: str | None) -> tuple[Window, ...]:
        """A tier's windows; the defaults for no tier or one no longer configured."""
        if tier is not None and tier in self._tier_windows:
            return self._tier_windows[tier]
        return self._user_windows

    async def check_limits(self, ctx: CallContext) -> None:
        if ctx.notes.internal:
            return  # the gateway's own work is bounded by the provider quota, not user limits
        identity = ctx.identity or await self.identify(ctx)
        user_windows = self.user_windows(identity.tier)
        if not user_windows and not self._ip_windows:
            return
        reservation = unique_id()
        checks: list[tuple[str, Sequence[Window], str, str]] = []  # scope, windows, prefix, who
        if user_windows:
            who = f"address {identity.user}" if identity.kind == "anonymous" else f"user {identity.user}"
            checks.append((keys.caller_scope(identity.kind, identity.user), user_windows, "", who))
        if self._ip_windows:
            ip = self.client_ip(ctx)
            checks.append((keys.ip_scope(ip), self._ip_windows, IP_POLICY_PREFIX, f"address {ip}"))
        results: list[tuple[Admission, str] | BaseException]
        if len(checks) == 1:
            scope, windows, _, _ = checks[0]
            results = [await self._acquire(scope, windows, reservation)]
        else:  # side by side, the user's and the address's checks share one store round trip
            results = await asyncio.gather(
                *(self._acquire(scope, windows, reservation) for scope, windows, _, _ in checks),
                return_exceptions=True,
            )
        states: list[tuple[str, int, float]] = []
        refused: list[tuple[Admission, Sequence[Window], str]] = []
        failure: BaseException | None = None
        admitted: list[tuple[str, Sequence[Window], str]] = []  # scope, windows, where recorded
        for (scope, windows, prefix, who), result in zip(checks, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
                continue
            verdict, where = result
            states += _states(prefix, windows, verdict)
            if verdict.admitted:
                admitted.append((scope, windows, where))
            else:
                refused.append((verdict, windows, who))
        if refused or failure is not None:
            for scope, windows, where in admitted:  # the call is refused: give its units back
                await self._windows.adjust(scope, windows, reservation, [0] * len(windows), where)
        if failure is not None:
            raise failure
        ctx.response_headers.append((b"ratelimit-policy", self._policy_header(identity.tier)))
        ctx.response_headers.append((b"ratelimit", policy.rate_limit(states).encode()))
        if refused:
            verdict, windows, who = refused[0]
            raise CallRefused(
                429, _refusal_message(who, verdict, windows), retry_after=_retry(verdict, windows)
            )

    def _policy_header(self, tier: str | None) -> bytes:
        header = self._policy_headers.get(tier)
        if header is None:
            pairs = [(w.name, w) for w in self.user_windows(tier)]
            pairs += [(IP_POLICY_PREFIX + w.name, w) for w in self._ip_windows]
            header = policy.rate_limit_policy(pairs).encode()
            self._policy_headers[tier] = header
        return header

    async def _acquire(
        self, scope: str, windows: Sequence[Window], reservation: str
    ) -> tuple[Admission, str]:
        got = await self._windows.acquire(scope, windows, [1] * len(windows), 1.0, reservation)
        if got is None:
            # Failing but not down: counting blind could over-admit, so ask for a retry.
            raise CallRefused(
                503, "The gateway's store is busy; retry shortly.", retry_after=STORE_BUSY_RETRY_S
            )
        return got

    async def usage(
        self, user: str, tier: str | None, kind: IdentityKind | None = None
    ) -> tuple[list[dict[str, object]], bool]:
        """Each window of ``user`` (of identity ``kind``; None: from the name's form, see
        ``policy.usage_subject``): used/limit/remaining/reset; and whether the numbers are
        this daemon's own (store down)."""
        windows = self.user_windows(tier)
        if not windows:
            return [], False
        if kind is None:
            kind, _ = policy.usage_subject(user)
        found = await self._windows.usage(keys.caller_scope(kind, user), windows)
        degraded = self._windows.degraded
        rows: list[dict[str, object]] = [
            {
                "window": u.name,
                "length_s": w.length_s,
                "used": u.used,
                "limit": u.limit,
                "remaining": max(0, u.limit - u.used),
                "reset_s": round(u.reset_after, 3),
            }
            for u, w in zip(found, windows, strict=True)
        ]
        return rows, degraded


def _states(prefix: str, windows: Sequence[Window], verdict: Admission) -> list[tuple[str, int, float]]:
    return [
        (prefix + w.name, w.limit - used, reset)
        for w, used, reset in zip(windows, verdict.usage, verdict.reset_after, strict=True)
    ]


def _retry(verdict: Admission, windows: Sequence[Window]) -> float:
    if math.isfinite(verdict.retry_after):
        return verdict.retry_after
    # A window with limit 0 never admits; point at its length rather than "never".
    return max(w.length_s for w in windows if w.name in verdict.blocked or not verdict.blocked)


def _refusal_message(who: str, verdict: Admission, windows: Sequence[Window]) -> str:
    limits = ", ".join(f"{w.limit} per {w.name}" for w in windows if w.name in verdict.blocked)
    return f"Rate limit exceeded for {who} ({limits}). Retry after the Retry-After delay."
