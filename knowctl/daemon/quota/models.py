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
from knowctl.policy.capacity import LearnedLimit
from knowctl.policy.paths import ApiCall
from knowctl.policy.pool import Deployment, Pool
from knowctl.policy.priority import Priority
from knowctl.policy.windows import Window
from knowctl.store import keys

DECISIONS = ("admitted", "queued", "refused", "fallback")
# Past this many models (and pass-through credentials' own states), idle credentials' go.
MAX_MODELS = 4096
# Between a deployment and a pass-through credential in a lane's scope.
CREDENTIAL_JOIN = "~"
# Between a deployment and a service tier whose limits it keeps apart.
TIER_JOIN = "."


@dataclass(frozen=True, slots=True)
class Asked:
    """What a call asks of the quota besides its path: its priority and the tier the caller
    chose itself, which together say at each deployment which of its tiers it counts in."""

    call: ApiCall
    priority: Priority = Priority.MEDIUM
    tier: str | None = None  # the caller's own (serviceTier, Vertex's request-type headers)

    def tier_at(self, deployment: Deployment) -> str | None:
        return self.tier or deployment.tiers.get(self.priority)


RECENT_S = 60  # "the last minute" of a deployment's share of traffic


@dataclass(slots=True)
class RecentCount:
    """Events in the last ``RECENT_S`` seconds, in one-second buckets (no per-event memory)."""

    buckets: list[int] = field(default_factory=lambda: [0] * RECENT_S)
    seconds: list[int] = field(default_factory=lambda: [0] * RECENT_S)

    def add(self, now: float) -> None:
        second = int(now)
        i = second % RECENT_S
        if self.seconds[i] != second:
            self.seconds[i], self.buckets[i] = second, 0
        self.buckets[i] += 1

    def total(self, now: float) -> int:
        oldest = int(now) - RECENT_S
        return sum(n for n, s in zip(self.buckets, self.seconds, strict=True) if s > oldest)


@dataclass(eq=False, slots=True)
class Lane:
    """One deployment's part of a model's quota: its windows in the store, and the provider's
    holds there (a 429 from one deployment holds that deployment only)."""

    deployment: Deployment
    scope: str
    windows: tuple[Window, ...]
    hold_name: str  # the hold's key and news name: the model (pool of one), or model/deployment
    tokens: bool = False  # has a token window
    hold_until: float = 0.0  # epoch: this deployment's quota for the model exhausted until then
    streak: int = 0  # upstream 429s in a row without a success
    inflight: dict[str, int] = field(default_factory=dict)  # window -> units reserved, unsettled
    admitted: int = 0  # calls admitted here by this daemon
    learned: LearnedLimit | None = None  # the capacity learned where none is declared
    last_used: int = 0  # requests in its window at the last admission (what a 429 learns from)
    tier: str | None = None  # the service tier whose limits it holds (None: the deployment's own)
    room: float = 1.0  # the smallest share of a window it had left when last looked at
    recent: RecentCount = field(default_factory=RecentCount)  # of them, in the last minute

    @property
    def name(self) -> str:
        return self.deployment.name


@dataclass(eq=False, slots=True)
class ModelState:
    """What this daemon knows about one model's quota, at every deployment that serves it."""

    name: str  # the model, or model/cred-... for one pass-through credential's own quota
    lanes: tuple[Lane, ...]
    model: str = ""  # the model alone (pool lookups, metrics labels)
    queue: WaitQueue[Ticket] = field(default_factory=WaitQueue)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None
    free_at: float = 0.0  # epoch: when the head waiter's blocking window frees
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DECISIONS, 0))
    hold_checked: bool = False
    awaited_until: float = 0.0  # epoch: the store's "callers wait for this model" flag lasts
    label: str = ""  # the model's metrics label, once its limits are exported under it
    output: tp.OutputHighMark = field(default_factory=tp.OutputHighMark)  # answers' usual length
    unreserved: int = 0  # output tokens the calls in flight may take beyond their reservations
    tiered: frozenset[tuple[str, str]] = frozenset()  # (deployment, tier) kept apart
    # (priority, replicas) -> the largest call its token windows admit. Token windows never
    # change once a lane is made (a learned capacity moves a request window only).
    token_caps: dict[tuple[Priority, int], int] = field(default_factory=dict)

    @property
    def limited(self) -> bool:
        """Some deployment declares a limit for the model: calls may wait for its windows."""
        return any(lane.windows for lane in self.lanes)

    @property
    def tokens(self) -> bool:
        return any(lane.tokens for lane in self.lanes)

    @property
    def hold_until(self) -> float:
        """Until when every deployment of the model is held (0 when none is, or none serves it)."""
        return min((lane.hold_until for lane in self.lanes), default=0.0)

    def lane(self, key: str | None) -> Lane | None:
        """The lane a ticket names (its ``lane``, else its deployment: that deployment's
        lane without a tier); None names the pool of one (a ticket made before deployments
        were recorded on it)."""
        if key is None:
            return self.lanes[0] if len(self.lanes) == 1 and self.lanes[0].deployment.legacy else None
        for lane in self.lanes:
            if lane.hold_name == key or (lane.name == key and lane.tier is None):
                return lane
        return None

    def _serving(self, asked: Asked | ApiCall) -> list[Lane]:
        """The lanes a call may count in, by preference order: at each deployment that serves
        it, the lane of the tier it asks for there if the deployment keeps that tier apart,
        else the deployment's own."""
        if isinstance(asked, ApiCall):
            asked = Asked(asked)
        call = asked.call
        if not self.tiered:
            return [lane for lane in self.lanes if lane.deployment.serves(call)]
        out = []
        for lane in self.lanes:
            d = lane.deployment
            if not d.serves(call):
                continue
            wanted = asked.tier_at(d)
            apart = wanted if (d.name, wanted) in self.tiered else None
            if lane.tier == apart:
                out.append(lane)
        return out

    def open_lanes(self, asked: Asked | ApiCall, now: float) -> list[Lane]:
        """The lanes that may take the call and are not held, by preference order."""
        return [lane for lane in self._serving(asked) if lane.hold_until <= now]

    def held_until(self, asked: Asked | ApiCall, now: float) -> float:
        """Until when every lane that may take the call is held (0 if one is open)."""
        serving = [lane.hold_until for lane in self._serving(asked)]
        return min(serving, default=0.0) if all(until > now for until in serving) else 0.0


class Models:
    """The models this daemon has met, by name; ``load_hold(name)`` reads a lane's hold from
    the store (the epoch it ends, or None)."""

    def __init__(
        self,
        pool: Pool,
        places: QueuePlaces,
        load_hold: Callable[[str], Awaitable[float | None]],
        load_learned: Callable[[str], Awaitable[tuple[float, bool] | None]] | None = None,
    ) -> None:
        self._pool = pool
        self._places = places
        self._load_hold = load_hold
        self._load_learned = load_learned
        self._by_name: dict[str, ModelState] = {}
        self._by_hold: dict[str, tuple[ModelState, Lane]] = {}

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def values(self) -> list[ModelState]:
        return list(self._by_name.values())

    def get(self, name: str) -> ModelState | None:
        return self._by_name.get(name)

    def known(self, name: str) -> ModelState:
        """The model, made now if this daemon has not met it (its holds not yet read)."""
        return self._by_name.get(name) or self._new(name)

    async def checked(self, name: str) -> ModelState:
        """The model, its holds read from the store the first time."""
        m = self.known(name)
        if not m.hold_checked:
            m.hold_checked = True  # once per model and daemon: later holds arrive by pub/sub
            await self.load_hold(m)
        return m

    def _new(self, name: str) -> ModelState:
        if len(self._by_name) >= MAX_MODELS:
            self._forget_idle()
        model, _, credential = name.partition(keys.LANE)
        lanes = []
        for d in self._pool.deployments:
            if d.models is not None and model not in d.models:
                continue
            windows = self._pool.windows(d, model)
            # A pass-through credential's calls spend its own project's quota: lanes of their own.
            part = (
                d.name
                if credential == ""
                else credential
                if d.legacy
                else f"{d.name}{CREDENTIAL_JOIN}{credential}"
            )
            lane = Lane(
                d,
                keys.quota_scope(model, None if d.legacy and not credential else part),
                windows,
                model if d.legacy and not credential else f"{model}{keys.LANE}{part}",
                qp.has_token_window(windows),
            )
            if not windows and not d.legacy and not credential and d.learn_from is not None:
                lane.learned = LearnedLimit(float(d.learn_from))
                lane.windows = (self._pool.learned_window(lane.learned.units),)
            lane.inflight = {w.name: 0 for w in lane.windows}
            lanes.append(lane)
            served = d.models.get(model) if d.models is not None else None
            for tier in served.tiers if served is not None else ():
                # Limits the provider keeps apart for a tier: a lane of its own, held apart too.
                windows = self._pool.windows(d, model, tier)
                apart = f"{part}{TIER_JOIN}{tier}"
                tiered = Lane(d, keys.quota_scope(model, apart), windows, f"{model}{keys.LANE}{apart}")
                tiered.tokens, tiered.tier = qp.has_token_window(windows), tier
                tiered.inflight = {w.name: 0 for w in windows}
                lanes.append(tiered)
        lanes.sort(key=lambda lane: lane.deployment.order)
        m = ModelState(name, tuple(lanes), model, WaitQueue(self._places))
        m.tiered = frozenset((lane.name, lane.tier) for lane in lanes if lane.tier is not None)
        for lane in lanes:
            self._by_hold[lane.hold_name] = (m, lane)
        self.label(m)
        self._by_name[name] = m
        return m

    @staticmethod
    def label(m: ModelState) -> str:
        """The model's metrics label (``other`` until the provider has known the name), its
        limits exported under it whenever it changes."""
        label = metrics.MODELS(m.model)
        if label != m.label:
            m.label = label
            for lane in m.lanes:
                for w in lane.windows:
                    if lane.deployment.legacy:
                        metrics.QUOTA_LIMIT.labels(label, w.name).set(w.limit)
                    else:
                        metrics.UPSTREAM_QUOTA_LIMIT.labels(lane.name, label, w.name).set(w.limit)
        return label

    def _forget_idle(self) -> None:
        """Drop the states of pass-through credentials with nothing queued or in flight here:
        one per credential and model would otherwise grow without bound. Their windows stay
        in the store; a state made again reads its holds again."""
        for name, m in list(self._by_name.items()):
            busy = (
                len(m.queue)
                or m.pump is not None
                or any(n for lane in m.lanes for n in lane.inflight.values())
            )
            if keys.LANE in name and not busy:
                del self._by_name[name]
                for lane in m.lanes:
                    self._by_hold.pop(lane.hold_name, None)

    def count(self, m: ModelState, decision: str) -> None:
        m.counts[decision] += 1
        metrics.QUOTA_DECISIONS_BY(self.label(m), decision).inc()

    # --- holds and notifications --------------------------------------------------------------
    async def load_hold(self, m: ModelState) -> None:
        for lane in m.lanes:
            until = await self._load_hold(lane.hold_name)
            if until is not None:
                self.hold(m, lane, until)
            if lane.learned is not None and self._load_learned is not None:
                found = await self._load_learned(lane.hold_name)
                if found is not None:
                    self.learn(lane, *found)

    def learn(self, lane: Lane, limit: float, probing: bool) -> None:
        """Take a learned capacity (this daemon's, or another's news) into the lane's window."""
        if lane.learned is None:
            return
        lane.learned.limit, lane.learned.probing = limit, probing
        self.learned(lane)

    def learned(self, lane: Lane) -> None:
        """The lane's learned capacity changed: its window follows, the gauge too."""
        assert lane.learned is not None
        lane.windows = (self._pool.learned_window(lane.learned.units),)
        model = lane.hold_name.partition(keys.LANE)[0]
        metrics.UPSTREAM_LEARNED_BY(lane.name, metrics.MODELS(model)).set(lane.learned.limit)

    def on_learned(self, hold_name: str, limit: float, probing: bool) -> None:
        found = self._by_hold.get(hold_name)
        if found is not None:
            self.learn(found[1], limit, probing)

    @staticmethod
    def hold(m: ModelState, lane: Lane, until: float) -> None:
        if until > lane.hold_until:
            lane.hold_until = until
            m.wake.set()  # a sleeping pump must now wait for the hold, or try elsewhere

    def on_freed(self, model: str) -> None:
        m = self._by_name.get(model)
        if m is not None:  # a model never seen here has no waiters here
            m.wake.set()

    def on_hold(self, hold_name: str, until: float) -> None:
        found = self._by_hold.get(hold_name)
        if found is not None:
            self.hold(found[0], found[1], until)

    async def on_subscribed(self) -> None:
        for m in list(self._by_name.values()):
            if m.limited:
                await self.load_hold(m)
                m.wake.set()
