"""What the provider quota knows of each model on this daemon: its windows and wait queue,
the provider's holds (after its own 429s, here or told by other daemons), the decisions
counted, and the metrics label its limits are exported under.

The models are made on first use from the quota config; a model's hold is read from the
store once per daemon, and later holds arrive by pub/sub (``QuotaBus``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from knowctl.daemon import metrics
from knowctl.daemon.context import Ticket
from knowctl.daemon.quota.waitqueue import QueuePlaces, WaitQueue
from knowctl.policy import quota as qp
from knowctl.policy import tokens as tp
from knowctl.policy.windows import Window
from knowctl.store import keys

DECISIONS = ("admitted", "queued", "refused", "fallback")


@dataclass(eq=False, slots=True)
class ModelState:
    """What this daemon knows about one model's quota."""

    name: str
    scope: str
    windows: tuple[Window, ...]
    tokens: bool  # has a token window
    queue: WaitQueue[Ticket] = field(default_factory=WaitQueue)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None
    free_at: float = 0.0  # epoch: when the head waiter's blocking window frees
    hold_until: float = 0.0  # epoch: provider quota exhausted until then
    streak: int = 0  # upstream 429s in a row without a success
    inflight: dict[str, int] = field(default_factory=dict)  # window -> units reserved, unsettled
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DECISIONS, 0))
    hold_checked: bool = False
    awaited_until: float = 0.0  # epoch: the store's "callers wait for this model" flag lasts
    label: str = ""  # the model's metrics label, once its limits are exported under it
    output: tp.OutputHighMark = field(default_factory=tp.OutputHighMark)  # answers' usual length
    unreserved: int = 0  # output tokens the calls in flight may take beyond their reservations


class Models:
    """The models this daemon has met, by name; ``load_hold(model)`` reads a model's hold
    from the store (the epoch it ends, or None)."""

    def __init__(
        self,
        cfg: qp.QuotaConfig,
        places: QueuePlaces,
        load_hold: Callable[[str], Awaitable[float | None]],
    ) -> None:
        self._cfg = cfg
        self._places = places
        self._load_hold = load_hold
        self._by_name: dict[str, ModelState] = {}

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def values(self) -> list[ModelState]:
        return list(self._by_name.values())

    def get(self, name: str) -> ModelState | None:
        return self._by_name.get(name)

    def known(self, name: str) -> ModelState:
        """The model, made now if this daemon has not met it (its hold not yet read)."""
        return self._by_name.get(name) or self._new(name)

    async def checked(self, name: str) -> ModelState:
        """The model, its hold read from the store the first time."""
        m = self.known(name)
        if not m.hold_checked:
            m.hold_checked = True  # once per model and daemon: later holds arrive by pub/sub
            await self.load_hold(m)
        return m

    def _new(self, name: str) -> ModelState:
        windows = self._cfg.windows(name)
        m = ModelState(
            name, keys.quota_scope(name), windows, qp.has_token_window(windows), WaitQueue(self._places)
        )
        m.inflight = {w.name: 0 for w in windows}
        self.label(m)
        self._by_name[name] = m
        return m

    @staticmethod
    def label(m: ModelState) -> str:
        """The model's metrics label (``other`` until the provider has known the name), its
        limits exported under it whenever it changes."""
        label = metrics.MODELS(m.name)
        if label != m.label:
            m.label = label
            for w in m.windows:
                metrics.QUOTA_LIMIT.labels(label, w.name).set(w.limit)
        return label

    def count(self, m: ModelState, decision: str) -> None:
        m.counts[decision] += 1
        metrics.QUOTA_DECISIONS_BY(self.label(m), decision).inc()

    # --- holds and notifications --------------------------------------------------------------
    async def load_hold(self, m: ModelState) -> None:
        until = await self._load_hold(m.name)
        if until is not None:
            self.hold(m, until)

    @staticmethod
    def hold(m: ModelState, until: float) -> None:
        if until > m.hold_until:
            m.hold_until = until
            m.wake.set()  # a sleeping pump must now wait for the hold instead

    def on_freed(self, model: str) -> None:
        m = self._by_name.get(model)
        if m is not None:  # a model never seen here has no waiters here
            m.wake.set()

    def on_hold(self, model: str, until: float) -> None:
        m = self._by_name.get(model)
        if m is not None:
            self.hold(m, until)

    async def on_subscribed(self) -> None:
        for m in list(self._by_name.values()):
            if m.windows:
                await self.load_hold(m)
                m.wake.set()
