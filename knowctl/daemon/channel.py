"""One store pub/sub channel kept open for a component, whatever the store does.

Several components hear other daemons' news (cache invalidations, revoked keys). Each needs
the same loop: subscribe, hand every message over, and after a lost subscription wait a
little and subscribe again. Messages published while unsubscribed are lost, so the owner is
told each time a subscription (re)starts and can drop what it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from knowctl.store import Notifications, StoreUnavailable

log = logging.getLogger("knowctl.channel")

RESUBSCRIBE_S = 0.5


class ChannelListener:
    def __init__(
        self,
        store: Notifications,
        channel: str,
        on_message: Callable[[bytes], None],
        on_subscribed: Callable[[bool], Awaitable[None] | None],
        *,
        name: str,
    ) -> None:
        """``on_subscribed(resumed)`` runs each time the subscription starts, before any message
        is handed over (awaited if it returns an awaitable); ``resumed`` is False the first
        time and True after a gap in which messages may have been lost."""
        self._store = store
        self._channel = channel
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self, wait_s: float) -> None:
        """Begin listening; return once subscribed, or after ``wait_s`` (the store is down:
        the listener keeps trying in the background)."""
        subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._listen(subscribed), name=self._name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(subscribed), wait_s)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _listen(self, subscribed: asyncio.Future[None]) -> None:
        resumed = False
        while not self._closed:
            try:
                async with self._store.subscribe(self._channel) as sub:
                    if not subscribed.done():
                        subscribed.set_result(None)
                    pending = self._on_subscribed(resumed)
                    if pending is not None:
                        await pending
                    async for raw in sub:
                        self._on_message(raw)
            except StoreUnavailable as exc:
                log.debug("%s: channel %s unavailable: %s", self._name, self._channel, exc)
            resumed = True
            await asyncio.sleep(RESUBSCRIBE_S)
