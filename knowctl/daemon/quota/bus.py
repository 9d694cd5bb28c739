"""Quota news between daemons sharing one store: "capacity freed" and "model held".

Pub/sub carries the news (messages are hints: a daemon that missed some while its
subscription was down looks again when it resubscribes); a hold is also written to a key
with a TTL, so a daemon that starts during a hold learns of it on its first call.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import orjson

from knowctl.daemon.channel import ChannelListener
from knowctl.store import Announcement, Keys, Notifications, StoreUnavailable, keys

log = logging.getLogger("knowctl.quota")


class BusStore(Keys, Notifications, Protocol):
    """What the quota bus needs of the store: hold flags, and the channel."""


class QuotaBus:
    def __init__(
        self,
        store: BusStore,
        *,
        on_freed: Callable[[str], None],
        on_hold: Callable[[str, float], None],
        on_subscribed: Callable[[], Awaitable[None]],
        on_learned: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        self._store = store
        self._on_freed = on_freed
        self._on_hold = on_hold
        self._on_learned = on_learned
        self._id = uuid.uuid4().hex  # tells our own messages apart
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        # News sent while we were away is lost: on_subscribed looks again, every time.
        self._listener = ChannelListener(
            store,
            keys.quota_channel(),
            self._dispatch,
            lambda _resumed: on_subscribed(),
            name="quota-bus",
        )

    async def start(self, wait_s: float) -> None:
        """Subscribe; return once subscribed, or after ``wait_s`` while the store is down
        (the listener keeps trying in the background)."""
        await self._listener.start(wait_s)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(self._listener.close(), *tasks, return_exceptions=True)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, kept referenced until it ends."""
        if self._closed:
            coro.close()
            return
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- sending ------------------------------------------------------------------------------
    def freed(self, model: str) -> Announcement:
        """ "``model`` has capacity again", for the adjustment that returns it: published only
        while some daemon has callers waiting (see waiting), not after every call."""
        message = orjson.dumps({"t": "freed", "m": model, "from": self._id})
        return Announcement(keys.quota_waiting(model), keys.quota_channel(), message)

    def waiting(self, model: str, for_s: float) -> None:
        """Ask the other daemons to announce returned capacity of ``model`` for the next
        ``for_s`` seconds: this one has callers queued (in the background)."""

        async def mark() -> None:
            try:
                await self._store.set(keys.quota_waiting(model), b"1", for_s)
            except StoreUnavailable as exc:  # waiters still wake at the computed free time
                log.debug("quota: could not mark %s as awaited: %s", model, exc)

        self.spawn(mark())

    def hold(self, model: str, until: float, delay: float) -> None:
        """Share a hold (epoch ``until``, ``delay`` seconds from now) with every daemon."""

        async def share() -> None:
            try:
                await self._store.set(keys.quota_hold(model), repr(until).encode(), delay)
            except StoreUnavailable as exc:
                log.warning("quota: could not store the hold of %s: %s", model, exc)
            await self._send({"t": "hold", "m": model, "u": until})

        self.spawn(share())

    def learned(self, lane: str, limit: float, probing: bool, keep_s: float) -> None:
        """Share a lane's learned capacity with every daemon, and keep it ``keep_s`` for
        daemons that start later."""

        async def share() -> None:
            value = orjson.dumps({"l": limit, "p": probing})
            try:
                await self._store.set(keys.quota_learned(lane), value, keep_s)
            except StoreUnavailable as exc:
                log.debug("quota: could not store the learned capacity of %s: %s", lane, exc)
            await self._send({"t": "learned", "m": lane, "l": limit, "p": probing})

        self.spawn(share())

    async def load_learned(self, lane: str) -> tuple[float, bool] | None:
        """The capacity the fleet learned for ``lane``, if it is kept."""
        try:
            raw = await self._store.get(keys.quota_learned(lane))
            found = orjson.loads(raw) if raw else None
        except (StoreUnavailable, orjson.JSONDecodeError):
            return None
        if not isinstance(found, dict) or not isinstance(found.get("l"), int | float):
            return None
        return float(found["l"]), bool(found.get("p"))

    async def load_hold(self, model: str) -> float | None:
        """The end (epoch) of a hold another daemon stored, if any."""
        try:
            raw = await self._store.get(keys.quota_hold(model))
        except StoreUnavailable:
            return None
        try:
            return float(raw) if raw else None
        except ValueError:
            return None

    async def _send(self, body: dict[str, Any]) -> None:
        try:
            await self._store.publish(keys.quota_channel(), orjson.dumps({**body, "from": self._id}))
        except StoreUnavailable as exc:
            log.debug("quota: could not publish %s: %s", body.get("t"), exc)

    # --- receiving ----------------------------------------------------------------------------
    def _dispatch(self, raw: bytes) -> None:
        try:
            msg = orjson.loads(raw)
            kind, model = msg["t"], msg["m"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if not isinstance(model, str) or msg.get("from") == self._id:
            return  # our own news we acted on already
        if kind == "freed":
            self._on_freed(model)
        elif kind == "hold" and isinstance(msg.get("u"), int | float):
            self._on_hold(model, float(msg["u"]))
        elif kind == "learned" and isinstance(msg.get("l"), int | float) and self._on_learned is not None:
            self._on_learned(model, float(msg["l"]), bool(msg.get("p")))
