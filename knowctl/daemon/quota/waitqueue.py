"""The waiting room of one model's quota: strict priority between levels, FIFO within one.

Plain data on one event loop (no locks needed): ``ProviderQuota`` pushes a waiter, a single
pump task per model serves :meth:`WaitQueue.head` first, and a waiter that gives up
(timeout, client gone) removes itself. A queue holds at most a few hundred waiters
(``queue_size``), so removing one from the middle of its deque is cheap enough.

Fair shares: :class:`QueuePlaces` counts the places each caller holds in all of a daemon's
queues (one per model), so that one caller (``queue_per_caller``) cannot fill the room
(``queue_size``) and lock everyone else out, whatever priority it asks for and however many
models it spreads over. The queues of one daemon share one ``QueuePlaces``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from knowctl.policy.priority import Priority

T = TypeVar("T")

_HIGHEST_FIRST = tuple(sorted(Priority, reverse=True))


@dataclass(eq=False, slots=True)
class Waiter(Generic[T]):
    """One queued request; ``future`` gets its result (a ticket) or its refusal."""

    priority: Priority
    tokens: int
    future: asyncio.Future[T] = field(repr=False)
    caller: str | None = None  # Identity.caller: whose place in the queue this is
    requests: int = 1  # what it counts in request windows (a batch of N embeddings: N)
    call: Any = None  # what it asks (quota.models.Asked): which deployments may serve it

    @property
    def gone(self) -> bool:
        return self.future.done()


class QueuePlaces:
    """How many places each caller holds in a daemon's wait queues, and whether it may take
    another: at most ``per_caller`` each (None: no bound). Only callers holding a place have
    an entry, so the table is never larger than the queues."""

    def __init__(self, per_caller: int | None) -> None:
        self.per_caller = per_caller
        self._held: dict[str, int] = {}

    def held(self, caller: str | None) -> int:
        return 0 if caller is None else self._held.get(caller, 0)

    def full(self, caller: str | None) -> bool:
        """Whether ``caller`` holds all the places it may (never for None: the gateway's own
        calls). Check it with no await before the push, so no other push comes between."""
        return caller is not None and self.per_caller is not None and self.held(caller) >= self.per_caller

    def take(self, caller: str | None) -> None:
        if caller is not None:
            self._held[caller] = self._held.get(caller, 0) + 1

    def give_back(self, caller: str | None) -> None:
        if caller is None:
            return
        left = self._held.get(caller, 0) - 1
        if left > 0:
            self._held[caller] = left
        else:
            self._held.pop(caller, None)

    def __len__(self) -> int:
        """Callers holding at least one place."""
        return len(self._held)


class WaitQueue(Generic[T]):
    def __init__(self, places: QueuePlaces | None = None) -> None:
        self._levels: dict[Priority, deque[Waiter[T]]] = {p: deque() for p in Priority}
        self._size = 0
        # Shared with the daemon's other queues; a queue of its own counts for itself only.
        self.places = places if places is not None else QueuePlaces(None)

    def __len__(self) -> int:
        return self._size

    def push(
        self,
        priority: Priority,
        tokens: int,
        caller: str | None = None,
        requests: int = 1,
        call: Any = None,
    ) -> tuple[Waiter[T], bool]:
        """Queue a new waiter last in its level, holding one of ``caller``'s places until it
        is removed (or drained); also say whether it became the head. The bound is the
        pusher's to check first (``places.full``): a push always succeeds."""
        waiter: Waiter[T] = Waiter(
            priority, tokens, asyncio.get_running_loop().create_future(), caller, requests, call
        )
        head = self.head()
        self._levels[priority].append(waiter)
        self._size += 1
        self.places.take(caller)
        return waiter, head is None or priority > head.priority

    def head(self) -> Waiter[T] | None:
        """The first waiter of the highest non-empty level."""
        for priority in _HIGHEST_FIRST:
            level = self._levels[priority]
            if level:
                return level[0]
        return None

    def remove(self, waiter: Waiter[T]) -> bool:
        level = self._levels[waiter.priority]
        try:
            level.remove(waiter)
        except ValueError:
            return False
        self._size -= 1
        self.places.give_back(waiter.caller)
        return True

    def ahead_of(self, priority: Priority) -> bool:
        """Whether a newcomer of ``priority`` would have to queue behind someone."""
        return any(self._levels[p] for p in Priority if p >= priority)

    def depth(self, priority: Priority) -> int:
        return len(self._levels[priority])

    def drain(self) -> list[Waiter[T]]:
        """Take every waiter out (shutdown), highest priority first."""
        out = [w for p in _HIGHEST_FIRST for w in self._levels[p]]
        for level in self._levels.values():
            level.clear()
        self._size = 0
        for waiter in out:
            self.places.give_back(waiter.caller)
        return out
