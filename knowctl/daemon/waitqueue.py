"""The waiting room of one model's quota: strict priority between levels, FIFO within one.

Plain data on one event loop (no locks needed): ``ProviderQuota`` pushes a waiter, a single
pump task per model serves :meth:`WaitQueue.head` first, and a waiter that gives up
(timeout, client gone) removes itself. A queue holds at most a few hundred waiters
(``queue_size``), so removing one from the middle of its deque is cheap enough.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from knowctl.policy.priority import Priority

T = TypeVar("T")

_HIGHEST_FIRST = tuple(sorted(Priority, reverse=True))


@dataclass(eq=False, slots=True)
class Waiter(Generic[T]):
    """One queued request; ``future`` gets its result (a ticket) or its refusal."""

    priority: Priority
    tokens: int
    future: asyncio.Future[T] = field(repr=False)

    @property
    def gone(self) -> bool:
        return self.future.done()


class WaitQueue(Generic[T]):
    def __init__(self) -> None:
        self._levels: dict[Priority, deque[Waiter[T]]] = {p: deque() for p in Priority}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, priority: Priority, tokens: int) -> tuple[Waiter[T], bool]:
        """Queue a new waiter last in its level; also say whether it became the head."""
        waiter: Waiter[T] = Waiter(priority, tokens, asyncio.get_running_loop().create_future())
        head = self.head()
        self._levels[priority].append(waiter)
        self._size += 1
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
        return out
