"""Coalescing of identical cache misses: one upstream call per key, in one daemon and across
daemons sharing a store.

- In a daemon: the first miss for a key leads; later ones wait on its future.
- Across daemons: the local leader takes a short lease in the store, in the same round trip
  that read the entry (``Store.read_or_lease``; the cache lookup has usually taken it already
  and hands it to :meth:`Coalescer.flight`). A daemon that finds the lease taken marks it watched
  and waits for the leader's news on the cache channel ("saved: read it", an answer that
  was not saved, or "done without one"), re-reading the lease now and then in case the news
  was lost, and gives up after ``coalesce_timeout``; then it goes upstream itself. A leader
  nobody watches sends nothing.
- The save stores the answer, releases the lease and tells the watchers in one round trip
  (``Store.finish_lease``). When the pipeline saves after the flight ends, the finished
  flight stays visible (at most a short grace period) and the leader holds its lease until
  the save, so a request arriving in between is still coalesced. An answer that is not
  saved (no-store) is shared only with requests that were waiting.

Store failures never block a request: the daemon then leads on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Protocol

from knowctl.daemon.cache import blobs
from knowctl.daemon.contracts import Answer, Flight
from knowctl.store import Keys, Leases, StoreUnavailable, keys

log = logging.getLogger("knowctl.cache")

# How long a finished leader waits for the pipeline's save before telling other daemons.
SAVE_GRACE_S = 2.0
# How often a daemon waiting for another's answer checks that the lease is still held.
LEASE_POLL_S = 0.5
# Answers larger than this are not sent over pub/sub; waiters read them from the store.
MAX_MESSAGE_BYTES = 512 * 1024

ANSWER = b"F"  # F key \n entry: the leader's answer, which it did not store
SAVED = b"S"  # S key: the leader stored its answer: read it from the store
NO_ANSWER = b"D"  # D key: the leader finished without an answer worth sharing

# (a fresh answer or None, whether the lease is now ours); see AnswerCache.read_or_lease.
LeaseReader = Callable[[str, bytes, bool], Awaitable[tuple[Answer | None, bool]]]


class CoalescerStore(Keys, Leases, Protocol):
    """What coalescing needs of the store: leases, and a look at one."""


class _Known:
    """A flight whose outcome is known on entry, after following another call: an answer,
    or None to go upstream alone."""

    __slots__ = ("answer",)
    waited = True

    def __init__(self, answer: Answer | None) -> None:
        self.answer = answer

    async def publish(self, answer: Answer | None) -> None:
        return None


class _Leader:
    """The flight of the request that calls upstream for its key."""

    def __init__(self, key: str, future: asyncio.Future[Answer | None]) -> None:
        self.key = key
        self.answer: Answer | None = None  # None on entry: the leader calls upstream
        self.result: Answer | None = None
        self.future = future
        self.lease: bytes | None = None
        self.saving = False  # the pipeline has begun to store the answer
        self.saved = asyncio.Event()
        self.waited = False  # for another daemon's flight, before leading

    async def publish(self, answer: Answer | None) -> None:
        self.result = answer
        if not self.future.done():
            self.future.set_result(answer)


class Coalescer:
    def __init__(
        self,
        store: CoalescerStore,
        *,
        shared: bool,
        timeout: float,
        daemon_id: str,
        read_or_lease: LeaseReader,
        on_coalesced: Callable[[], None],
    ) -> None:
        self._store = store
        self.shared = shared
        self._timeout = timeout
        self.lease_ttl = timeout + SAVE_GRACE_S
        self._id = daemon_id
        self._read_or_lease = read_or_lease
        self._on_coalesced = on_coalesced
        self._local: dict[str, _Leader] = {}
        self._remote: dict[str, asyncio.Future[Answer | None]] = {}
        self._tokens = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()

    def new_token(self) -> bytes:
        return f"{self._id}:{next(self._tokens)}".encode()

    def release(self, key: str, token: bytes) -> None:
        """Give back a lease taken needlessly (in the background), waking any watcher."""
        self._spawn(self._finish_lease(key, token, NO_ANSWER + key.encode()))

    def take_lease(self, key: str) -> bytes | None:
        """The lease of ``key``'s local leader, handed to the save that releases it."""
        leader = self._local.get(key)
        if leader is None or leader.lease is None:
            return None
        token, leader.lease = leader.lease, None
        return token

    @asynccontextmanager
    async def flight(self, key: str, parked: bytes | None = None) -> AsyncIterator[Flight]:
        """Lead the upstream call for ``key`` or follow the one in flight. ``parked``: the
        lease the lookup took; from here on the flight owns it (and releases it)."""
        existing = self._local.get(key)
        if existing is not None:
            if parked is not None:
                # A local leader appeared while our lookup awaited the store (it waits for the
                # lease we took): follow it, and hand the lease back so that it can lead.
                self.release(key, parked)
            answer = await self._follow(existing)
            if answer is not None:
                self._on_coalesced()
            yield _Known(answer)
            return
        leader = _Leader(key, asyncio.get_running_loop().create_future())
        leader.lease = parked
        self._local[key] = leader
        try:
            if self.shared and parked is None:
                leader.waited = True
                answer = await self._wait_for_remote(leader)
                if answer is not None:
                    self._on_coalesced()
                    await leader.publish(answer)
                    leader.saved.set()  # nothing of ours to save or announce
                    yield _Known(answer)
                    return
            yield leader
        finally:
            self._finish(leader)

    def saving(self, key: str) -> None:
        """The pipeline began to store the answer of ``key`` (called before its first await)."""
        leader = self._local.get(key)
        if leader is not None and leader.result is not None:
            leader.saving = True

    def saved(self, key: str) -> None:
        """The pipeline stored the answer of ``key``: a finished leader may now announce it."""
        leader = self._local.get(key)
        if leader is not None and leader.result is not None:
            leader.saved.set()

    def on_message(self, kind: bytes, key: str, payload: bytes) -> None:
        """News from another daemon's leader (see the message kinds above)."""
        waiter = self._remote.get(key)
        if waiter is None or waiter.done():
            return
        if kind == ANSWER:
            decoded = blobs.decode(payload)
            waiter.set_result(decoded[1] if decoded is not None else None)
        elif kind in (SAVED, NO_ANSWER):
            waiter.set_result(None)  # look again: read the saved entry, or take the lease

    async def close(self) -> None:
        for waiter in self._remote.values():
            if not waiter.done():
                waiter.set_result(None)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def in_flight(self) -> int:
        return len(self._local)

    # --- inside ------------------------------------------------------------------------------
    async def _follow(self, leader: _Leader) -> Answer | None:
        try:
            return await asyncio.wait_for(asyncio.shield(leader.future), self._timeout)
        except TimeoutError:
            return None

    async def _wait_for_remote(self, leader: _Leader) -> Answer | None:
        """Take the key's lease (return None: we lead), or wait for the daemon that holds it
        (return its answer). None also when the store fails or the wait times out."""
        key = leader.key
        lease_key = keys.cache_lease(key)
        token = self.new_token()
        deadline = time.monotonic() + self._timeout
        # The first look leads whenever the lease is free, fresh entry or not: the lookup
        # found none (or was not asked: Cache-Control: no-cache).
        lead_anyway = True
        while True:
            # Listen before looking, so news sent in between is not missed.
            waiter: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
            self._remote[key] = waiter
            try:
                try:
                    answer, leased = await self._read_or_lease(key, token, lead_anyway)
                    lead_anyway = False
                    if leased:
                        leader.lease = token
                        return None
                    if answer is not None:
                        return answer
                    while True:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return None
                        try:
                            got = await asyncio.wait_for(asyncio.shield(waiter), min(remaining, LEASE_POLL_S))
                        except TimeoutError:
                            if await self._store.get(lease_key) is None:
                                break  # the leader went without a word: look again
                            continue
                        if got is not None:
                            return got
                        break  # the leader saved, or failed: look again
                except StoreUnavailable:
                    return None
            finally:
                if self._remote.get(key) is waiter:
                    del self._remote[key]
            if time.monotonic() >= deadline:
                return None

    def _finish(self, leader: _Leader) -> None:
        if not leader.future.done():
            leader.future.set_result(None)  # failed or cancelled: followers go upstream
        if leader.result is None or leader.saved.is_set():
            self._forget(leader)
            if leader.lease is not None:
                self._spawn(self._announce(leader))
            return
        self._spawn(self._after_save(leader))

    def _forget(self, leader: _Leader) -> None:
        if self._local.get(leader.key) is leader:
            del self._local[leader.key]

    async def _after_save(self, leader: _Leader) -> None:
        # The pipeline calls save() right after the flight ends, with no await in between, so
        # by the time this task first runs it has begun saving, or it will not save at all
        # (Cache-Control: no-store): then later requests must not get this answer.
        await asyncio.sleep(0)
        if leader.saving:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leader.saved.wait(), SAVE_GRACE_S)
        self._forget(leader)
        if leader.lease is not None:
            await self._announce(leader)

    async def _announce(self, leader: _Leader) -> None:
        """Release the lease of a leader whose answer was not saved, telling any watcher how
        it ended (a saved answer released it already, see AnswerCache.save)."""
        token, leader.lease = leader.lease, None
        if token is None:
            return
        key = leader.key.encode()
        message = NO_ANSWER + key
        if leader.result is not None:
            entry = blobs.encode(leader.result, time.time())
            if len(entry) <= MAX_MESSAGE_BYTES:
                message = ANSWER + key + b"\n" + entry
        await self._finish_lease(leader.key, token, message)

    async def _finish_lease(self, key: str, token: bytes, message: bytes) -> None:
        try:
            await self._store.finish_lease(
                keys.cache_lease(key), keys.cache_watch(key), token, keys.cache_channel(), message
            )
        except StoreUnavailable as exc:
            log.debug("cache: could not release a coalescing lease: %s", exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
