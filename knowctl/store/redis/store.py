"""The Redis store: connection, timeouts and error mapping, plain keys, windows, pub/sub.

One class for every deployment shape: the client (one server, Sentinel-managed master, or
Cluster) is built per URL scheme in :mod:`knowctl.store.redis.clients`; the scripts, the
timeouts and the error mapping live here once. Cluster-only key handling (scans over every
primary, unlinks grouped by slot, subscriptions on a chosen node) is in
:mod:`knowctl.store.redis.cluster`; following a Sentinel failover, in
:mod:`knowctl.store.redis.sentinel`. The cache-side operations (records, leases, tallies,
key scans and unlinks) are a mixin, :mod:`knowctl.store.redis.cache`, that runs its
commands through this class's calls.

Every check-and-update is one Lua script (``knowctl/store/lua``), so it is atomic however
many daemons share the server, and it reads the server's clock (TIME), so pods with skewed
clocks still agree on every window. Every call is bounded by ``timeout`` seconds and
raises :class:`StoreUnavailable` instead of hanging.

A call that times out after Redis ran its script may leave a reservation recorded that
the caller never uses: that can only under-admit, never over-admit.

Operational note: run Redis with ``maxmemory-policy noeviction`` (or no maxmemory) for
quota state; an evicted window log would forget usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from importlib.resources import files
from typing import Any, TypeVar, cast

from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from knowctl.net.resp import Arg, Multiplexer
from knowctl.policy.windows import Window, capacity, day_boundaries
from knowctl.store import keys
from knowctl.store.base import (
    NOT_LOOKED,
    Admission,
    Announcement,
    Candidate,
    Choice,
    Claim,
    Store,
    StoreUnavailable,
    Subscription,
    WindowUsage,
    check_candidates,
    check_ttl,
    check_window_call,
    redact_url,
)
from knowctl.store.redis.cache import RedisCacheOps

# Keys per DEL/UNLINK command: big enough to amortise round trips, small enough not to stall Redis.
KEY_BATCH = 1000
T = TypeVar("T")

# How long one pub/sub read waits before looking again; bounds how late close() is noticed.
_POLL_S = 1.0
# Server errors that mean "not now" (failover, loading, out of memory), not "bad call".
# redis-py strips the code from the messages of the errors it has a class for, so match
# those by class and the rest (BUSY: a script runs too long) by prefix.
_TRANSIENT = ("OOM", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY", "READONLY", "NOREPLICAS")
_TRANSIENT_ERRORS = (
    rexc.OutOfMemoryError,
    rexc.ReadOnlyError,
    rexc.ClusterDownError,  # includes MasterDownError
    rexc.TryAgainError,
    rexc.ClusterError,  # redirections exhausted ("TTL exhausted") during a resharding
)


def _unavailable(exc: BaseException) -> bool:
    """Whether a redis-py error means the store cannot answer now (degrade), not a bug."""
    if isinstance(exc, rexc.ResponseError):
        return isinstance(exc, _TRANSIENT_ERRORS) or str(exc).startswith(_TRANSIENT)
    if isinstance(exc, rexc.RedisClusterException):
        # Raised client-side when no node is reachable, slots are uncovered or the topology
        # cannot be read; but keys of one command on different slots is our bug: raise it.
        return "same key slot" not in str(exc) and not isinstance(
            exc, rexc.CrossSlotTransactionError | rexc.InvalidPipelineStack
        )
    return isinstance(exc, rexc.ClusterError)


def load_script(name: str, *, lib: bool = True) -> str:
    """A script from knowctl/store/lua, with the shared _lib.lua (the window helpers) in
    front of it unless ``lib`` is false."""
    lua = files("knowctl.store") / "lua"
    text = (lua / f"{name}.lua").read_text(encoding="utf-8")
    return (lua / "_lib.lua").read_text(encoding="utf-8") + "\n" + text if lib else text


@lru_cache(maxsize=128)
def _midnights(tz: str, hour: int) -> tuple[int, ...]:
    # The midnights sent span two days either side, so computing them once an hour is plenty.
    return tuple(_us(b) for b in day_boundaries(tz, hour * 3600.0))


def _choice(raw: list[int], windows: Sequence[Sequence[Window]], claimed: bool) -> Choice:
    """acquire.lua's reply: admitted, retry_after_us, chosen, how many candidates it reports
    (a prefix), then per reported candidate and window usage, reset_after_us, blocked, then the
    claims if asked for (one pass: this runs on every limit check and quota admission). A
    candidate not looked at has no usage."""
    chosen = raw[2] - 1 if raw[2] > 0 else None
    retry_after = float("inf") if raw[1] < 0 else raw[1] / 1e6
    reported = raw[3]
    at = 4
    claims_at = 4 + 3 * sum(len(ws) for ws in windows[:reported])
    admissions: list[Admission] = []
    for c, ws in enumerate(windows[:reported]):
        if raw[at] == -1:  # read but not looked at (the others of a replay)
            admissions.append(NOT_LOOKED)
            at += 3 * len(ws)
            claims_at += len(ws) if claimed else 0
            continue
        usage = tuple(raw[at : at + 3 * len(ws) : 3])
        reset_after = tuple(r / 1e6 for r in raw[at + 1 : at + 3 * len(ws) : 3])
        blocked = tuple(w.name for w, b in zip(ws, raw[at + 2 : at + 3 * len(ws) : 3], strict=True) if b == 1)
        at += 3 * len(ws)
        held: tuple[int, ...] = ()
        if claimed:
            held = tuple(raw[claims_at : claims_at + len(ws)])
            claims_at += len(ws)
        won = chosen == c
        admissions.append(
            Admission(
                won,
                0.0 if won else (retry_after if chosen is None else 0.0),
                usage,
                tuple(w.limit for w in ws),
                reset_after,
                blocked,
                held,
            )
        )
    admissions += [NOT_LOOKED] * (len(windows) - reported)
    return Choice(chosen, tuple(admissions), 0.0 if chosen is not None else retry_after)


@lru_cache(maxsize=4096)  # a caller's or a lane's scope recurs on every call
def _scope_keys(scope: str, windows: tuple[Window, ...]) -> tuple[str, ...]:
    return tuple(k for w in windows for k in keys.window_keys(scope, w.name).as_list())


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


# A cap no window reaches: exact in Lua doubles and in ZSET scores (2^53).
UNBOUNDED_CAP = 2**53


class RedisStore(RedisCacheOps, Store):
    backend = "redis"

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        url: str,
        timeout: float,
        closers: Sequence[Callable[[], Awaitable[Any]]] = (),
        mux: Multiplexer | None = None,
    ) -> None:
        """``client`` comes from knowctl.store.redis.clients (timeouts, no retries) and is
        owned by the store from now on; ``closers`` are closed with it; ``url`` is only
        described (redacted), never connected to here. ``mux``, for one server, carries the
        single commands (knowctl.net.resp); the client the rest (pipelines, SCAN, pub/sub)."""
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._url = url
        self._timeout = timeout
        self._client = client
        self._closers = list(closers)
        self._mux = mux
        # register_script only hashes the text; the first EVALSHA that meets NOSCRIPT (first
        # use, server restart, SCRIPT FLUSH) loads the script and runs it again.
        self._acquire = self._client.register_script(load_script("acquire"))
        self._adjust = self._client.register_script(load_script("adjust"))
        self._usage = self._client.register_script(load_script("usage"))
        # Keys and values travel as KEYS/ARGV: data, never script text.
        self._delete_if_equal = self._client.register_script(load_script("delete_if_equal", lib=False))
        self._read_or_lease = self._client.register_script(load_script("read_or_lease", lib=False))
        self._finish_lease = self._client.register_script(load_script("finish_lease", lib=False))
        self._subscriptions: set[_RedisSubscription] = set()

    def describe(self) -> str:
        return redact_url(self._url)

    async def _call(self, op: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation through redis-py within the timeout, mapping outages to
        StoreUnavailable."""
        return await self._mapped(op, self._bounded(make))

    async def _bounded(self, make: Callable[[], Awaitable[T]]) -> T:
        async with asyncio.timeout(self._timeout):
            return await make()

    async def _run(self, op: str, *args: Arg) -> Any:
        """One command that answers at once: on the multiplexed connection when there is one
        (it bounds the wait itself), else through redis-py."""
        mux = self._mux
        if mux is None:
            return await self._call(op, lambda: self._client.execute_command(*args))
        return await self._mapped(op, mux.execute(*args))

    async def _eval(self, op: str, script: AsyncScript, script_keys: list[str], args: list[Any]) -> Any:
        """Run a registered Lua script (loading it on the server on first use)."""
        mux = self._mux
        if mux is None:
            return await self._call(op, lambda: script(keys=script_keys, args=args))
        return await self._mapped(op, mux.evalsha(str(script.sha), str(script.script), script_keys, args))

    async def _mapped(self, op: str, pending: Awaitable[T]) -> T:
        """Await one operation, raising StoreUnavailable for an outage (see _outage)."""
        try:
            return await pending
        except Exception as exc:
            mapped = self._outage(op, exc)
            if mapped is None:
                raise
            raise mapped from exc

    def _outage(self, op: str, exc: Exception) -> StoreUnavailable | None:
        """The StoreUnavailable that ``exc`` means, or None when it is a bug to raise as is."""
        if isinstance(exc, TimeoutError | rexc.TimeoutError):
            return StoreUnavailable(f"{self.describe()}: {op} timed out after {self._timeout:g}s")
        if isinstance(exc, rexc.ConnectionError | OSError):
            return StoreUnavailable(f"{self.describe()}: {op} failed: {exc}")
        if isinstance(exc, rexc.RedisError | rexc.RedisClusterException) and _unavailable(exc):
            return StoreUnavailable(f"{self.describe()}: {op} failed: {exc!r}")
        return None

    async def ping(self) -> float:
        started = time.perf_counter()
        await self._run("PING", "PING")
        return time.perf_counter() - started

    async def close(self) -> None:
        for sub in list(self._subscriptions):
            await sub.aclose()
        if self._mux is not None:
            await self._mux.close()
        for close in [self._client.aclose, *self._closers]:
            try:
                async with asyncio.timeout(self._timeout):
                    await close()
            except (TimeoutError, rexc.RedisError, OSError):
                pass  # closing is best effort: the sockets are gone either way

    # --- plain keys -------------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        keys.check(key)
        value: Any = await self._run("GET", "GET", key)
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        keys.check(key)
        check_ttl(ttl)
        ms = max(1, round(ttl * 1000))
        await self._run("SET", "SET", key, value, "PX", ms)

    async def delete(self, *names: str) -> int:
        return await self._remove("DEL", names)

    def _key_batches(self, names: Sequence[str]) -> list[Sequence[str]]:
        """Keys for one multi-key command each (RedisClusterStore: one slot per batch)."""
        return [names[start : start + KEY_BATCH] for start in range(0, len(names), KEY_BATCH)]

    async def _remove(self, command: str, names: Sequence[str]) -> int:
        """DEL or UNLINK ``names``: multi-key commands of up to KEY_BATCH keys, pipelined (one
        command per batch is about ten times cheaper than one per key). execute_command, not
        pipe.delete/unlink: the Cluster pipeline's take one key, though one slot's keys may
        go together."""
        for key in names:
            keys.check(key)
        if not names:
            return 0

        async def run() -> int:
            pipe = self._client.pipeline(transaction=False)
            for batch in self._key_batches(names):
                pipe.execute_command(command, *batch)
            return sum(int(n) for n in await pipe.execute())

        return await self._call(command, run)

    # --- sliding windows -------------------------------------------------------------------
    def _script_input(
        self,
        scope: str,
        windows: Sequence[Window],
        reservation_id: str,
        caps: Sequence[int],
        amounts: Sequence[int],
    ) -> tuple[list[str], list[Arg]]:
        script_keys: list[str] = []
        args: list[Arg] = [reservation_id]
        self._windows_input(scope, windows, caps, amounts, script_keys, args)
        return script_keys, args

    @staticmethod
    def _windows_input(
        scope: str,
        windows: Sequence[Window],
        caps: Sequence[int],
        amounts: Sequence[int],
        script_keys: list[str],
        args: list[Arg],
    ) -> None:
        """One scope's window keys and arguments (_lib.lua, parse_windows), appended."""
        script_keys += _scope_keys(scope, tuple(windows))
        args.append(len(windows))
        around = 0.0
        for w, cap, amount in zip(windows, caps, amounts, strict=True):
            if w.calendar_tz:
                around = around or time.time()  # only picks which midnights to send; the script uses TIME
                days = _midnights(w.calendar_tz, int(around // 3600))
                args += [_us(w.length_s), cap, amount, len(days), *days]
            else:
                args += [_us(w.length_s), cap, amount, 0]

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
        check_window_call(scope, windows, amounts, reservation_id)
        caps = [capacity(w.limit, share) for w in windows]
        choice = await self._acquire_in(((scope, windows, caps, amounts),), reservation_id, claim)
        return choice.admissions[0]

    async def acquire_any(
        self,
        candidates: Sequence[Candidate],
        *,
        share: float = 1.0,
        reservation_id: str,
        claim: Claim | None = None,
        fresh: bool = False,
    ) -> Choice:
        check_candidates(candidates, reservation_id)
        return await self._acquire_in(
            [
                (c.scope, c.windows, [capacity(w.limit, share) for w in c.windows], c.amounts)
                for c in candidates
            ],
            reservation_id,
            claim,
            fresh,
        )

    async def _acquire_in(
        self,
        candidates: Sequence[tuple[str, Sequence[Window], Sequence[int], Sequence[int]]],
        reservation_id: str,
        claim: Claim | None,
        fresh: bool = False,
    ) -> Choice:
        """acquire.lua over ``candidates`` (scope, windows, caps, amounts), tried in that order."""
        script_keys: list[str] = []
        args: list[Arg] = [reservation_id, len(candidates)]
        args += [claim.claimant, claim.divisor, _us(claim.ttl_s)] if claim is not None else ["", 0, 0]
        args.append(1 if fresh else 0)
        for scope, windows, caps, amounts in candidates:
            self._windows_input(scope, windows, caps, amounts, script_keys, args)
            if claim is not None:
                args += [w.limit for w in windows]
        raw: list[int] = await self._eval("acquire", self._acquire, script_keys, args)
        return _choice(raw, [c[1] for c in candidates], claim is not None)

    async def record(
        self, scope: str, windows: Sequence[Window], amounts: Sequence[int], *, reservation_id: str
    ) -> None:
        check_window_call(scope, windows, amounts, reservation_id)
        caps = [UNBOUNDED_CAP] * len(windows)  # acquire.lua then admits whatever is recorded
        await self._acquire_in(((scope, windows, caps, amounts),), reservation_id, None)

    async def adjust(
        self,
        scope: str,
        windows: Sequence[Window],
        reservation_id: str,
        amounts: Sequence[int],
        *,
        announce: Announcement | None = None,
    ) -> None:
        check_window_call(scope, windows, amounts, reservation_id)
        caps = [w.limit for w in windows]  # unused by adjust.lua
        script_keys, args = self._script_input(scope, windows, reservation_id, caps, amounts)
        if announce is not None:
            keys.check(announce.flag)
            keys.check(announce.channel)
            script_keys.append(announce.flag)
            args += [announce.channel, announce.message]
        await self._eval("adjust", self._adjust, script_keys, args)

    async def usage(self, scope: str, windows: Sequence[Window]) -> list[WindowUsage]:
        check_window_call(scope, windows, None, None)
        zeros = [0] * len(windows)
        script_keys, args = self._script_input(scope, windows, "-", zeros, zeros)
        raw: list[int] = await self._eval("usage", self._usage, script_keys, args)
        return [
            WindowUsage(w.name, int(raw[3 * i]), w.limit, int(raw[3 * i + 1]), raw[3 * i + 2] / 1e6)
            for i, w in enumerate(windows)
        ]

    # --- notifications ----------------------------------------------------------------------
    async def publish(self, channel: str, message: bytes) -> None:
        keys.check(channel)
        await self._run("PUBLISH", "PUBLISH", channel, message)

    def subscribe(self, channel: str) -> Subscription:
        keys.check(channel)
        return _RedisSubscription(self, channel)

    async def _pubsub_candidates(self, channel: str) -> list[Callable[[], PubSub]]:
        """Ways to open a subscription connection, tried in order until one subscribes."""
        client = self._client
        assert isinstance(client, Redis)  # RedisClusterStore picks nodes itself
        return [client.pubsub]


class _RedisSubscription(Subscription):
    """One channel on its own pooled connection. A lost connection ends iteration with
    StoreUnavailable; the caller subscribes again (messages published meanwhile are lost,
    as with any Redis pub/sub, so treat them as hints and re-check state after a gap)."""

    def __init__(self, store: RedisStore, channel: str) -> None:
        self._store = store
        self._channel = channel
        self._pubsub: PubSub | None = None
        self._closed = False

    async def start(self) -> None:
        if self._pubsub is not None:
            return
        if self._closed:
            raise StoreUnavailable("subscription is closed")
        self._store._subscriptions.add(self)
        try:
            await self._store._call("SUBSCRIBE", self._connect)
        except BaseException:
            await self.aclose()
            raise

    async def _connect(self) -> None:
        last: Exception | None = None
        for make in await self._store._pubsub_candidates(self._channel):
            pubsub = make()
            self._pubsub = pubsub
            try:
                await self._subscribe(pubsub)
                return
            except (rexc.ConnectionError, OSError) as exc:
                # Cluster: that node is down; any other one delivers the channel too.
                last = exc
                self._pubsub = None
                await _close_quietly(pubsub)
        raise StoreUnavailable(f"{self._store.describe()}: SUBSCRIBE failed: {last!r}") from last

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        await self.start()
        while not self._closed:
            pubsub = self._pubsub
            assert pubsub is not None
            message = await self._read(pubsub)
            if message is not None and message.get("type") == "message":
                return bytes(message["data"])
        raise StopAsyncIteration

    async def _subscribe(self, pubsub: PubSub) -> None:
        # SUBSCRIBE only sends the command; wait for the server's confirmation so that a
        # message published (on another connection) after start() returns is never missed.
        await pubsub.subscribe(self._channel)
        while True:
            message: Any = await pubsub.get_message(timeout=self._store._timeout)
            if message is not None and message.get("type") == "subscribe":
                return

    async def _read(self, pubsub: PubSub) -> Any:
        # get_message with a timeout returns None after that long without a message; it
        # does not fall back to the socket timeout, which would fire on a quiet channel.
        try:
            return await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_S)
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            await self.aclose()
            raise StoreUnavailable(f"{self._store.describe()}: subscription lost: {exc}") from exc

    async def aclose(self) -> None:
        self._closed = True
        self._store._subscriptions.discard(self)
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                async with asyncio.timeout(self._store._timeout):
                    await _close_quietly(pubsub)
            except TimeoutError:
                pass


async def _close_quietly(pubsub: PubSub) -> None:
    with contextlib.suppress(TimeoutError, rexc.RedisError, OSError):
        await cast(Any, pubsub).aclose()  # through Any: untyped before redis-py 8.2
