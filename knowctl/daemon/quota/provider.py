"""The provider quota gate: RPM/RPD/TPM/TPD windows shared through the store, a priority
queue per model, and holds after the provider's own 429s.

- ``try_admit`` is one ``store.acquire`` (one atomic Lua script on Redis); models without
  limits never touch the store, and a held model or a busy queue answers from memory.
- ``wait_admit`` queues by priority. One pump task per model lets only the head waiter try,
  and sleeps until the blocking window frees (the store's exact ``retry_after``) or until
  woken: a settle here or on another daemon returned tokens (pub/sub), a hold ended, a more
  important waiter arrived. No polling.
- ``settle`` replaces the token estimate by the real usage (``store.adjust``).
- Store failures are retried with the same reservation id; while the store's breaker is
  open (and while it recovers) admission follows this daemon's share of every window
  (``windows/store.py``, ``degraded.py``).

What it knows of each model (holds, counts, labels) is ``models.py``; its report, ``stats.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from knowctl.daemon import metrics
from knowctl.daemon.context import CallContext, Ticket
from knowctl.daemon.contracts import CallRefused
from knowctl.daemon.ids import unique_id
from knowctl.daemon.quota import stats
from knowctl.daemon.quota.bus import QuotaBus
from knowctl.daemon.quota.models import Asked, Lane, Models, ModelState
from knowctl.daemon.quota.waitqueue import QueuePlaces
from knowctl.daemon.windows.degraded import local_limit
from knowctl.daemon.windows.store import FailoverWindows
from knowctl.policy import quota as qp
from knowctl.policy import tiers
from knowctl.policy import tokens as tp
from knowctl.policy.pool import Pool
from knowctl.policy.priority import Priority
from knowctl.policy.windows import capacity, headroom
from knowctl.store import Announcement, Candidate, Health, Keys, Notifications, Windows, keys

log = logging.getLogger("knowctl.quota")

# Estimates kept for calls between try_admit and wait_admit (count_tokens mode only).
_ESTIMATE_MEMO = 4096
# How long the fleet keeps a learned capacity for daemons that start later (Vertex's shared
# pools change through the day: a week-old figure is no better than a fresh start).
LEARNED_KEEP_S = 86400.0
# When the store is overloaded (answers others, not us), try again after this long.
STORE_BUSY_RETRY_S = 0.1


class ProviderStore(Health, Windows, Keys, Notifications, Protocol):
    """What the provider quota needs of the store: the windows, and the bus's flags and channel."""


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """What the provider quota needs of the settings (knowctl.daemon.config.provider_config)."""

    quota: qp.QuotaConfig  # the windows of each model, priority shares
    pool: Pool  # the upstream deployments, and each model's windows at each
    token_estimator: str  # bytes or count_tokens
    token_bytes_per_token: float
    default_max_output_tokens: int
    queue_size: int
    queue_per_caller: int
    queue_timeout: float
    upstream_backoff_s: float
    upstream_backoff_max_s: float
    max_replicas: int
    store_timeout: float


class ProviderQuota:
    """The QuotaGate of knowctl.daemon.contracts.

    Degraded mode (store unreachable): each daemon admits what it had claimed in the shared
    windows, then ``1/max_replicas`` of each window, in its own memory, and writes it back
    when the store returns: the fleet never over-admits (windows/store.py, windows/degraded.py).
    """

    def __init__(
        self,
        config: ProviderConfig,
        store: ProviderStore,
        count_tokens: Callable[[CallContext], Awaitable[int]] | None = None,
    ) -> None:
        self._config = config
        self._cfg = config.quota
        use_count = config.token_estimator == "count_tokens"  # noqa: S105 (not a secret)
        self._count_tokens = count_tokens if use_count else None
        self._waiting = 0
        self._places = QueuePlaces(config.queue_per_caller)
        # The models read their holds through the bus, made next with their callbacks.
        self._models = Models(
            config.pool,
            self._places,
            lambda name: self._bus.load_hold(name),
            lambda name: self._bus.load_learned(name),
        )
        self._estimates: OrderedDict[int, tuple[CallContext, tp.Reservation]] = OrderedDict()
        self._bus = QuotaBus(
            store,
            on_freed=self._models.on_freed,
            on_hold=self._models.on_hold,
            on_subscribed=self._models.on_subscribed,
            on_learned=self._models.on_learned,
        )
        self._windows = FailoverWindows(
            store,
            self._bus.spawn,
            replicas=config.max_replicas,
            timeout=config.store_timeout,
            claims=True,
        )
        self._closed = False

    @property
    def degraded(self) -> bool:
        """The shared store does not answer: admissions come from local windows."""
        return self._windows.degraded

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen for other daemons' notifications (returns once subscribed, or at once if the
        store is down: the listener keeps trying in the background)."""
        await self._bus.start(self._config.store_timeout * 4)

    async def close(self) -> None:
        """Answer every waiter (503, retry soon), stop the tasks, drop the local windows."""
        self._closed = True
        for m in self._models.values():
            for waiter in m.queue.drain():
                if not waiter.gone:
                    waiter.future.set_exception(
                        CallRefused(503, "The gateway is shutting down.", retry_after=1)
                    )
            if m.pump is not None:
                m.pump.cancel()
        await self._bus.close()
        await self._windows.close()

    # --- QuotaGate ---------------------------------------------------------------------------
    @property
    def reserves_early(self) -> bool:
        """Whether ``reserve`` needs nothing but the store (no countTokens call first), so
        it can share a round trip with the caller's limit check and the cache lookup."""
        return self._count_tokens is None

    @staticmethod
    def _key(ctx: CallContext) -> str:
        """Whose quota the call spends: the model's, or with a verified pass-through credential
        that credential's own (its project's), never shared with another caller's. A credential
        not yet seen to succeed shares the model's: made-up keys cannot mint windows."""
        model = ctx.call.model or "-"
        identity = ctx.identity
        if identity is None or identity.kind != "passthrough" or identity.credential is None:
            return model
        return f"{model}{keys.LANE}{identity.credential}"

    @staticmethod
    def _asked(ctx: CallContext) -> Asked:
        """What the call asks besides its path: its priority, and the tier the caller chose."""
        return Asked(ctx.call, ctx.priority, tiers.caller_tier(ctx.call.family, ctx.payload, ctx.header))

    async def reserve(self, ctx: CallContext) -> Ticket | float:
        m = await self._models.checked(self._key(ctx))
        now = time.time()
        asked = self._asked(ctx)
        lanes = m.open_lanes(asked, now)
        if not lanes:
            # Also for models without limits of ours: the provider said 429 at every deployment,
            # and asking again before the hold ends only earns another (a stale answer may
            # serve instead).
            return max(m.held_until(asked, now) - now, STORE_BUSY_RETRY_S)
        if not lanes[0].windows:
            return self._unmetered(m, lanes[0])
        if m.queue.ahead_of(ctx.priority):
            # Strict priority and FIFO hold for newcomers too: do not overtake the queue.
            return max(0.0, m.free_at - now)
        reserving = await self._estimate(ctx, m)
        if self._count_tokens is not None:  # the estimate waited for countTokens: look again
            lanes = m.open_lanes(asked, time.time())
        return await self._acquire(m, asked, ctx.priority, reserving, lanes)

    async def try_admit(self, ctx: CallContext, reserved: Ticket | float | None = None) -> Ticket | float:
        # With ``reserved`` nothing here suspends: a reservation handed in cannot be lost
        # to a cancellation between its hand-over and this return.
        result = await self.reserve(ctx) if reserved is None else reserved
        if isinstance(result, Ticket):
            self._admitted(self._models.known(result.model), result)
            ctx.deployment = result.deployment
        return result

    def release(self, ticket: Ticket) -> None:
        """Give back, in the background, a reservation no upstream call will use."""
        m = self._models.get(ticket.model)
        if m is not None and ticket.reservation_id:
            self._bus.spawn(self._release(m, ticket))

    async def wait_admit(self, ctx: CallContext, retry_after: float) -> Ticket:
        m = await self._models.checked(self._key(ctx))
        now = time.time()
        asked = self._asked(ctx)
        lanes = m.open_lanes(asked, now)
        if not m.limited or (lanes and not lanes[0].windows):
            if not lanes:  # no queue without windows: the caller retries after the hold
                self._refuse(
                    m, f"The provider's quota for {m.name} is exhausted.", m.held_until(asked, now) - now
                )
            ticket = self._unmetered(m, lanes[0])
            self._admitted(m, ticket)
            ctx.deployment = ticket.deployment
            return ticket
        timeout = self._config.queue_timeout
        held = m.held_until(asked, now) - now
        if qp.never_fits(retry_after):
            self._refuse(
                m,
                f"The request exceeds the {m.name} quota available to priority "
                f"{ctx.priority.name} and can never be admitted.",
                None,
            )
        if held > timeout or qp.refuse_at_once(retry_after, timeout, m.tokens):
            self._refuse(m, f"Quota exceeded for {m.name}.", max(retry_after, held))
        if self._waiting >= self._config.queue_size:
            self._refuse(m, f"Quota exceeded for {m.name} and the wait queue is full.", retry_after)
        reserving = await self._estimate(ctx, m)
        caller = ctx.identity.caller if ctx.identity is not None else None
        if self._places.full(caller):  # no await from here to the push
            self._refuse(
                m, f"Quota exceeded for {m.name}; this caller holds its share of the wait queue.", retry_after
            )
        waiter, is_head = m.queue.push(ctx.priority, reserving.tokens, caller, reserving.requests, asked)
        now = time.time()
        if now >= m.awaited_until - timeout / 2:  # marked for at least another half wait
            m.awaited_until = now + timeout + 1
            self._bus.waiting(m.name, timeout + 1)
        self._waiting += 1
        self._count(m, "queued")
        metrics.QUEUE_DEPTH_BY(ctx.priority.name).inc()
        if is_head:
            m.wake.set()  # the pump must reconsider who goes first
        if m.pump is None:
            m.pump = asyncio.create_task(self._pump(m), name=f"quota-pump-{m.name}")
        try:
            await asyncio.wait({waiter.future}, timeout=timeout)
        except asyncio.CancelledError:
            # The caller went away; a ticket granted at that very moment must go back.
            fut = waiter.future
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._bus.spawn(self._release(m, fut.result()))
            raise
        finally:
            self._waiting -= 1
            metrics.QUEUE_DEPTH_BY(ctx.priority.name).dec()
            if m.queue.remove(waiter):
                m.wake.set()
            if not waiter.future.done():
                waiter.future.cancel()  # tells the pump to hand back a ticket it gets now
        if waiter.future.cancelled():
            now = time.time()
            self._refuse(
                m,
                f"Quota exceeded for {m.name}; no capacity freed within {timeout:g}s.",
                max(m.free_at, m.hold_until, now) - now,
            )
        try:
            ticket = waiter.future.result()
        except CallRefused as refused:
            self._count(m, "refused")
            raise refused from None
        self._unreserved(m, ticket, reserving.unreserved)
        self._admitted(m, ticket)
        ctx.deployment = ticket.deployment
        return ticket

    async def settle(self, ticket: Ticket, usage: dict[str, Any] | None) -> None:
        m = self._models.get(ticket.model)
        lane = m.lane(ticket.lane or ticket.deployment) if m is not None else None
        if m is None or lane is None or not ticket.reservation_id:
            return
        for w in lane.windows:
            lane.inflight[w.name] -= (
                ticket.estimated_tokens if w.name in qp.TOKEN_WINDOWS else ticket.requests
            )
        unreserved = ticket.data.pop("unreserved", 0)
        if unreserved:
            m.unreserved -= unreserved
            metrics.QUOTA_UNRESERVED_BY(self._models.label(m)).set(m.unreserved)
        await self._true_up(m, ticket, usage)

    async def reconcile(self, ticket: Ticket, usage: dict[str, Any]) -> None:
        # Often on another daemon than the one that admitted it: one that may not know the model yet.
        if ticket.reservation_id:
            await self._true_up(self._models.known(ticket.model), ticket, usage)

    async def _true_up(self, m: ModelState, ticket: Ticket, usage: dict[str, Any] | None) -> None:
        """The windows' record of ``ticket`` made its real usage (None: left as reserved)."""
        output = tp.output_tokens(usage)
        if output is not None:
            m.output.observe(output)
        actual = tp.actual_tokens(usage, self._cfg.token_mode)
        lane = m.lane(ticket.lane or ticket.deployment)
        if actual is None or lane is None:
            return  # cut off or no counts: the reservation stands, which can only under-admit
        lane.streak = 0
        if not lane.tokens:
            return
        # A context cache's tokens count in the usage but are not in the body the estimate
        # read: not an error of the estimate's.
        cached = usage.get("cachedContentTokenCount", 0) if usage is not None else 0
        metrics.TOKEN_ESTIMATE_ERROR.observe(
            actual - (cached if isinstance(cached, int) else 0) - ticket.estimated_tokens
        )
        if actual == ticket.estimated_tokens:
            return
        returned = actual < ticket.estimated_tokens
        announce = self._bus.freed(m.name) if returned else None
        if not await self._adjust(
            m, lane, ticket, qp.amounts(lane.windows, actual, ticket.requests), announce
        ):
            return
        if returned:
            m.wake.set()

    def upstream_exhausted(
        self, model: str, retry_delay: float | None, deployment: str | None = None
    ) -> None:
        """The provider said 429 for ``model`` at ``deployment`` (the pool's most preferred
        when not given): hold that deployment for the model, here and on every daemon. A
        learned capacity learns from it instead, and is held only for the RetryInfo given."""
        m = self._models.known(model)
        lane = m.lane(deployment) or (m.lanes[0] if m.lanes else None)
        if lane is None:
            return
        metrics.UPSTREAM_REFUSED_BY(lane.name, self._models.label(m)).inc()
        if lane.learned is not None:
            if lane.learned.refused(lane.last_used, time.time()):
                self._learned(lane)
            if retry_delay is None:
                return  # the learned window now holds it back: no blind back-off besides
        self._hold(m, lane, retry_delay)

    def _hold(self, m: ModelState, lane: Lane, retry_delay: float | None) -> None:
        """Take the lane out until the provider's RetryInfo delay, or for a back-off that
        doubles while it keeps refusing or failing."""
        now = time.time()
        if lane.hold_until <= now:
            # Count a new 429 only once the previous hold ended: calls already in flight
            # when the first 429 came must not escalate the back-off.
            lane.streak += 1
        delay = qp.hold_delay(
            retry_delay,
            max(1, lane.streak),
            self._config.upstream_backoff_s,
            self._config.upstream_backoff_max_s,
        )
        until = now + delay
        self._models.hold(m, lane, until)
        self._bus.hold(lane.hold_name, until, delay)

    def _learned(self, lane: Lane) -> None:
        """The lane's learned capacity moved: its window here, and the news to the fleet."""
        learned = lane.learned
        assert learned is not None
        self._models.learned(lane)
        self._bus.learned(lane.hold_name, learned.limit, learned.probing, LEARNED_KEEP_S)

    def upstream_failed(self, model: str, deployment: str | None) -> None:
        """A circuit breaker per deployment and model: a failure takes the deployment out for
        a back-off that doubles while it keeps failing (the hold of a 429, without RetryInfo);
        when it ends the next call probes it, and a success closes it (``streak`` back to 0).
        The pool of one is never taken out: there is nowhere else to go."""
        m = self._models.known(model)
        lane = m.lane(deployment)
        if len(m.lanes) > 1 and lane is not None:
            self._hold(m, lane, None)

    def alternatives(self, ctx: CallContext) -> bool:
        m = self._models.get(self._key(ctx))
        if m is None or len(m.lanes) < 2:
            return False
        return any(lane.name != ctx.deployment for lane in m.open_lanes(self._asked(ctx), time.time()))

    def record_fallback(self, model: str) -> None:
        """The pipeline served a stale answer instead of waiting for quota."""
        self._count(self._models.known(model), "fallback")

    # --- admission ---------------------------------------------------------------------------
    async def _acquire(
        self,
        m: ModelState,
        call: Asked | None,
        priority: Priority,
        reserving: tp.Reservation | int,
        open_lanes: list[Lane] | None = None,
    ) -> Ticket | float:
        """Reserve at whichever open deployment of the model has room, in one store call
        (``open_lanes``: the call's open lanes, when the caller has just looked)."""
        planned = reserving if isinstance(reserving, tp.Reservation) else tp.Reservation(reserving)
        tokens = planned.tokens
        now = time.time()
        if open_lanes is not None:
            lanes = open_lanes
        else:
            lanes = m.open_lanes(call, now) if call is not None else list(m.lanes)
        if not lanes:
            return max(m.held_until(call, now) - now if call is not None else 0.0, STORE_BUSY_RETRY_S)
        if not lanes[0].windows:
            return self._unmetered(m, lanes[0])
        # Tried in this order, the first with room admits (one script): by preference, then by
        # the headroom each had when last looked at, which keeps deployments of one order level.
        metered = sorted(
            (lane for lane in lanes if lane.windows), key=lambda lane: (lane.deployment.order, -lane.room)
        )
        rid = unique_id()
        candidates = [
            Candidate(
                lane.scope,
                lane.windows,
                qp.amounts(lane.windows, tokens, planned.requests),
            )
            for lane in metered
        ]
        got = await self._windows.acquire_any(candidates, self._cfg.share(priority), rid)
        if got is None:  # the store is overloaded: admit nothing blind, come back shortly
            return STORE_BUSY_RETRY_S
        choice, where = got
        label = self._models.label(m)
        for lane, admission in zip(metered, choice.admissions, strict=True):
            if not admission.usage:
                continue  # not looked at: its headroom stands as last seen
            lane.room = headroom(admission.usage, [w.limit for w in lane.windows])
            if lane.learned is not None:
                lane.last_used = admission.usage[0]
            legacy = lane.deployment.legacy
            for w, used in zip(lane.windows, admission.usage, strict=False):  # unasked: none
                if legacy:
                    metrics.QUOTA_USED_BY(label, w.name).set(used)
                else:
                    metrics.UPSTREAM_QUOTA_USED_BY(lane.name, label, w.name).set(used)
        if choice.chosen is None:
            spare = next((lane for lane in lanes if not lane.windows), None)
            return self._unmetered(m, spare) if spare is not None else choice.retry_after
        lane = metered[choice.chosen]
        for w, amount in zip(lane.windows, candidates[choice.chosen].amounts, strict=True):
            lane.inflight[w.name] += amount
        if lane.learned is not None and lane.learned.admitted(
            lane.last_used, now, self._config.pool.minute_s
        ):
            self._learned(lane)
        ticket = Ticket(
            m.name, rid, tokens, {"where": where}, planned.requests, deployment=lane.name, lane=lane.hold_name
        )
        self._unreserved(m, ticket, planned.unreserved)
        return ticket

    @staticmethod
    def _unmetered(m: ModelState, lane: Lane) -> Ticket:
        """Admission at a deployment without declared limits: nothing to reserve."""
        return Ticket(m.name, "", 0, deployment=lane.name, lane=lane.hold_name)

    def _admitted(self, m: ModelState, ticket: Ticket) -> None:
        self._count(m, "admitted")
        lane = m.lane(ticket.lane or ticket.deployment)
        if lane is not None:
            lane.admitted += 1
            lane.recent.add(time.time())
            metrics.UPSTREAM_ADMITTED_BY(lane.name, self._models.label(m)).inc()

    def _unreserved(self, m: ModelState, ticket: Ticket, tokens: int) -> None:
        """Count what the ticket's answer may take beyond its reservation, until settled."""
        if tokens:
            ticket.data["unreserved"] = ticket.data.get("unreserved", 0) + tokens
            m.unreserved += tokens
            metrics.QUOTA_UNRESERVED_BY(self._models.label(m)).set(m.unreserved)

    async def _estimate(self, ctx: CallContext, m: ModelState) -> tp.Reservation:
        if not m.tokens:
            return tp.Reservation(0, requests=ctx.requests)  # no token window: the count would not be used
        surface = ctx.call.surface.value
        if self._count_tokens is not None and surface == "models" and not ctx.call.embeds:
            memo = self._estimates.get(id(ctx))
            if memo is not None and memo[0] is ctx:
                return memo[1]
            try:
                counted = await self._count_tokens(ctx)
            except Exception as exc:  # any failure of the upstream call: fall back to bytes
                log.warning("quota: countTokens failed, estimating from bytes: %s", exc)
                counted = tp.input_estimate(ctx.payload, self._config.token_bytes_per_token)
        elif ctx.input_texts is not None:  # an embedding call: only what goes upstream counts
            counted = tp.texts_estimate(ctx.input_texts, self._config.token_bytes_per_token)
        else:
            counted = tp.input_estimate(ctx.payload, self._config.token_bytes_per_token, surface)
        reserving = tp.reservation(
            # Server-side history (an interaction's previous turns) is input too.
            counted + ctx.history_tokens,
            ctx.payload,
            self._cfg.token_mode,
            0 if ctx.call.embeds else self._config.default_max_output_tokens,
            likely_output=0 if ctx.call.embeds else m.output.value,
            cap=self._token_cap(m, ctx.priority),
            surface=surface,
            requests=ctx.requests,
        )
        if self._count_tokens is not None and surface == "models" and not ctx.call.embeds:
            self._estimates[id(ctx)] = (ctx, reserving)  # holding ctx keeps its id unique
            while len(self._estimates) > _ESTIMATE_MEMO:
                self._estimates.popitem(last=False)
        return reserving

    def _token_cap(self, m: ModelState, priority: Priority) -> int:
        """The most one call may reserve and still be admissible: the smallest token window
        at the call's priority (this daemon's share of it while the store is down)."""
        replicas = self._windows.local.replicas if self.degraded else 1
        cap = m.token_caps.get((priority, replicas))
        if cap is not None:
            return cap
        share = self._cfg.share(priority)
        # The most any one deployment admits: a call that fits one of them is admissible.
        cap = m.token_caps[priority, replicas] = max(
            min(
                capacity(local_limit(w.limit, replicas), share)
                for w in lane.windows
                if w.name in qp.TOKEN_WINDOWS
            )
            for lane in m.lanes
            if lane.tokens
        )
        return cap

    async def _pump(self, m: ModelState) -> None:
        """Serve the model's queue head first, sleeping until capacity can have freed."""
        try:
            while (waiter := m.queue.head()) is not None:
                m.wake.clear()  # cleared before trying, so a wake-up during the try is kept
                now = time.time()
                held = m.held_until(waiter.call, now) if waiter.call is not None else m.hold_until
                if held > now:
                    await self._sleep(m, held - now)
                    continue
                try:
                    result = await self._acquire(
                        m,
                        waiter.call,
                        waiter.priority,
                        tp.Reservation(waiter.tokens, requests=waiter.requests),
                    )
                except Exception as exc:  # a bug or a broken store: fail this waiter, not all
                    if not waiter.gone:
                        waiter.future.set_exception(exc)
                    m.queue.remove(waiter)
                    continue
                if waiter.gone:  # gave up while we asked: hand the capacity back
                    if isinstance(result, Ticket) and result.reservation_id:
                        await self._release(m, result)
                    continue
                if isinstance(result, Ticket):
                    m.queue.remove(waiter)
                    waiter.future.set_result(result)
                elif qp.never_fits(result):
                    m.queue.remove(waiter)
                    waiter.future.set_exception(
                        CallRefused(429, f"The request exceeds the {m.name} quota available to its priority.")
                    )
                else:
                    m.free_at = now + result
                    await self._sleep(m, result)
        finally:
            m.pump = None  # the next waiter starts a new pump

    @staticmethod
    async def _sleep(m: ModelState, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(m.wake.wait(), max(delay, 0.001))

    async def _adjust(
        self,
        m: ModelState,
        lane: Lane,
        ticket: Ticket,
        amounts: tuple[int, ...],
        announce: Announcement | None = None,
    ) -> bool:
        where = str(ticket.data.get("where", "shared"))
        return await self._windows.adjust(
            lane.scope, lane.windows, ticket.reservation_id, amounts, where, announce
        )

    async def _release(self, m: ModelState, ticket: Ticket) -> None:
        """Give back an admission nobody will use: amounts 0 free it in every window."""
        await self.settle(ticket, None)
        lane = m.lane(ticket.lane or ticket.deployment)
        if lane is None or not lane.windows:
            return
        if not await self._adjust(m, lane, ticket, (0,) * len(lane.windows), self._bus.freed(m.name)):
            return
        m.wake.set()

    def _refuse(self, m: ModelState, message: str, retry_after: float | None) -> NoReturn:
        self._count(m, "refused")
        raise CallRefused(429, message, retry_after=None if retry_after is None else max(0.0, retry_after))

    def _count(self, m: ModelState, decision: str) -> None:
        self._models.count(m, decision)

    # --- stats ------------------------------------------------------------------------------------
    async def upstreams(self) -> list[dict[str, Any]]:
        """What /api/upstreams answers of the quota: each deployment's models, their windows,
        holds, health and share of this daemon's traffic in the last minute."""
        for d in self._config.pool.deployments:
            for name in d.models or ():
                self._models.known(name)  # declared models show before their first call
        return await stats.upstreams(self._models, self._windows, self._config.pool)

    # --- stats (per model) ----------------------------------------------------------------------
    async def stats(self, model: str | None = None) -> dict[str, Any]:
        """What /api/quota/stats answers: per model and window, and for the whole daemon."""
        queue = {
            "waiting": self._waiting,
            "size": self._config.queue_size,
            "timeout_s": self._config.queue_timeout,
        }
        return await stats.report(self._models, self._windows, self._cfg, queue, model)
