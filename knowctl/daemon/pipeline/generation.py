"""The generation pipeline: cache, coalescing, provider quota, upstream, settle, save.

Order (docs/architecture.md, one call): the caller's limits, the cache lookup and a
reservation of provider quota (side by side: one store round trip) -> coalesce identical
calls -> quota (the reservation if it admitted, else a stale answer, else the priority
queue, else 429) -> upstream, streamed through as it arrives -> reconcile tokens with the
real usage -> store the answer if it is a complete success. A hit gives its reservation
back once answered. Writes after the answer (settle, save) happen once the caller has its
last byte, side by side. A miss makes one store round trip before its upstream call and
one after (tests/gateway/test_round_trips.py holds it to that).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from knowctl.daemon.context import CallContext, Ticket
from knowctl.daemon.contracts import Answer, Cached, CallRefused, Lookup, QuotaGate, ResponseCache
from knowctl.daemon.pipeline import surfaces
from knowctl.daemon.pipeline.replies import CACHE_HEADER, send_cached, send_refusal, send_upstream_error
from knowctl.daemon.upstream.client import (
    OutgoingCall,
    UpstreamClient,
    UpstreamFailure,
    drain,
)
from knowctl.errors import parse_retry_delay, retry_after_header
from knowctl.net.asgi import Send, respond
from knowctl.policy.fallback import MODEL_HEADER, Fallbacks, retarget
from knowctl.policy.quota import provider_counted
from knowctl.policy.retries import RetryBudget

log = logging.getLogger("knowctl.generate")

# Counts a call against its caller's limits; raises CallRefused when over.
Admit = Callable[[CallContext], Awaitable[None]]

# Keeps a complete answer for the next identical call (the cache's save, bound to its key).
Keep = Callable[[Answer], Awaitable[None]]

# Streams larger than this are passed through but not kept for the cache.
MAX_CAPTURE_BYTES = 8 * 1024 * 1024


def cache_directives(ctx: CallContext) -> tuple[bool, bool]:
    """(may read the cache, may write it) from the client's Cache-Control header."""
    value = ctx.header.get("cache-control", "").lower()
    if not value:
        return True, True
    directives = {part.strip().split("=", 1)[0] for part in value.split(",")}
    return "no-cache" not in directives, "no-store" not in directives


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one upstream call came to."""

    status: int
    answer: Answer | None = None  # set only for a complete, successful answer
    usage: dict[str, Any] | None = None  # the final usageMetadata of any finished answer
    provider_refused: bool = False  # the provider answered 429
    retry_delay: float | None = None  # its RetryInfo delay, when it gave one
    spent: bool = True  # the provider may have counted the call against its quota
    failed: bool = False  # the deployment failed: a 5xx, or no answer (unreachable, timeout)
    # Nothing reached the caller and another deployment may serve: try it (``_forward``'s
    # ``failover``); the caller has been sent nothing.
    failover: bool = False


class Holdings:
    """What one call holds on its way upstream: a provider-quota reservation and a coalescing
    lease. Whoever uses one takes it (``take_*``); leaving the ``with`` block gives back what
    was not taken, on every path. One that lands later (a lookup or reservation still running
    when the call was refused) goes back as it lands."""

    __slots__ = ("_cache", "_closed", "_key", "_lease", "_quota", "_reserved")

    def __init__(self, cache: ResponseCache, quota: QuotaGate, key: str) -> None:
        self._cache = cache
        self._quota = quota
        self._key = key
        self._reserved: Ticket | float | None = None
        self._lease: bytes | None = None
        self._closed = False

    def __enter__(self) -> Holdings:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closed = True
        self.give_back_reservation()
        lease = self.take_lease()
        if lease is not None:
            self._cache.release(self._key, lease)

    def hold(self, lease: bytes | None, reserved: Ticket | float | None) -> None:
        if lease is not None:
            self._lease = lease
        if reserved is not None:
            self._reserved = reserved
        if self._closed:
            self.__exit__()

    def take_lease(self) -> bytes | None:
        lease, self._lease = self._lease, None
        return lease

    def take_reservation(self) -> Ticket | float | None:
        reserved, self._reserved = self._reserved, None
        return reserved

    def give_back_reservation(self) -> None:
        reserved = self.take_reservation()
        if isinstance(reserved, Ticket):
            self._quota.release(reserved)

    def lookup_landed(self, looking: asyncio.Future[Lookup]) -> None:
        if not looking.cancelled() and looking.exception() is None:
            self.hold(looking.result().lease, None)

    def reservation_landed(self, reserving: asyncio.Future[Ticket | float]) -> None:
        if not reserving.cancelled() and reserving.exception() is None:
            self.hold(None, reserving.result())


class Generation:
    def __init__(
        self,
        upstream: UpstreamClient,
        cache: ResponseCache,
        quota: QuotaGate,
        answered: Callable[[CallContext, int], None],
        retries: RetryBudget | None = None,
        fallbacks: Fallbacks | None = None,
    ) -> None:
        self._answered = answered
        self._upstream = upstream
        self._cache = cache
        self._quota = quota
        self._retries = retries or RetryBudget()
        self._fallbacks = fallbacks or Fallbacks()

    async def __call__(self, ctx: CallContext, send: Send, admit: Admit) -> int:
        """Run one generation call; ``admit`` counts it against the caller's limits (raises
        CallRefused), before anything is served, cached answers included."""
        key = self._cache.key_for(ctx)
        if key is None:
            await admit(ctx)
            return (await self._call_with_quota(ctx, send, None)).status
        read, write = cache_directives(ctx)
        with Holdings(self._cache, self._quota, key) as held:
            found = Lookup()
            if read:
                found = await self._admit_and_look(ctx, key, admit, held)
            else:
                await admit(ctx)
                ctx.response_headers.append((CACHE_HEADER, b"BYPASS"))
                ctx.notes.cache = "BYPASS"
            if found.cached is not None:  # needs no quota: the reservation goes back after
                return await send_cached(send, ctx, found.cached)
            lease = held.take_lease()
            if lease is None:  # the flight waits for another call's: free the quota now
                held.give_back_reservation()
            async with self._cache.flight(key, lease) as flight:
                if flight.answer is not None:  # an identical call finished while we waited
                    fresh = Cached(answer=flight.answer, layer="L1", age_s=0.0)
                    return await send_cached(send, ctx, fresh, label="HIT-COALESCED")
                if flight.waited:
                    # A reservation counts in the windows from when it was made: used after a
                    # wait, its call would leave them early. It goes back; admitted afresh.
                    held.give_back_reservation()
                outcome = Outcome(status=499)
                keep = functools.partial(self._cache.save, key) if write else None
                try:
                    # Saved before the waiters are told, so one that looks in the store finds it.
                    outcome = await self._call_with_quota(ctx, send, key, keep, held.take_reservation())
                finally:
                    await flight.publish(outcome.answer)
        return outcome.status

    async def _admit_and_look(self, ctx: CallContext, key: str, admit: Admit, held: Holdings) -> Lookup:
        """The caller's limit check, the cache lookup and, for a miss, the provider quota's
        reservation, whose lease and reservation go to ``held``. When they need the shared
        store they run side by side, so their commands share one round trip
        (knowctl.net.resp sends the commands of one loop turn together): a miss then makes
        one round trip before the upstream call, not three."""
        cache = self._cache
        local = cache.lookup_local(key)
        if local is not None or not cache.shared:
            await admit(ctx)
            found = Lookup(local) if local is not None else await cache.lookup_shared(key)
            held.hold(found.lease, None)
            return found
        # The lookup's and the reservation's first steps run right after the limit check has
        # queued its commands and before they are written: one write, one round trip.
        looking = asyncio.ensure_future(cache.lookup_shared(key))
        reserving = asyncio.ensure_future(self._quota.reserve(ctx)) if self._quota.reserves_early else None
        try:
            await admit(ctx)
            found = await looking
            held.hold(found.lease, await reserving if reserving is not None else None)
        except BaseException:
            # Refused (or cancelled): what the lookup or the reservation still brings goes back.
            looking.add_done_callback(held.lookup_landed)
            if reserving is not None:
                reserving.add_done_callback(held.reservation_landed)
            raise
        return found

    async def _call_with_quota(
        self,
        ctx: CallContext,
        send: Send,
        key: str | None,
        keep: Keep | None = None,
        reserved: Ticket | float | None = None,
    ) -> Outcome:
        """Admit (with what ``reserved`` got, if anything), forward, then settle the quota
        and ``keep`` a complete answer. A deployment that refuses (429) or fails before the
        caller has a byte is held, and the call admitted again at another (docs/architecture.md,
        "Upstream deployments"), within the retry budget."""
        self._retries.started()
        try:
            got = await self._quota.try_admit(ctx, reserved)
            attempt = 0
            while True:
                outcome = await self._attempt(ctx, send, key, keep, got, attempt)
                if not outcome.failover:
                    return outcome
                attempt += 1
                got = await self._quota.try_admit(ctx)
        finally:
            self._retries.finished()

    async def _attempt(
        self,
        ctx: CallContext,
        send: Send,
        key: str | None,
        keep: Keep | None,
        got: Ticket | float,
        attempt: int,
    ) -> Outcome:
        """One admission and upstream call; a failover outcome has sent the caller nothing."""
        if isinstance(got, Ticket):
            ticket = got
            ctx.notes.quota = "admitted"
        else:
            remedied = await self._overflow(ctx, send, key, got)
            if isinstance(remedied, Outcome):
                return remedied
            ticket = remedied
        return await self._spend(ctx, send, key, keep, ticket, attempt)

    async def _overflow(
        self, ctx: CallContext, send: Send, key: str | None, retry_after: float
    ) -> Ticket | Outcome:
        """No deployment of the model has room now: the remedies in the order set for the
        call's priority (a stale copy, a fallback model, the queue), then a 429."""
        for remedy in self._fallbacks.remedies(ctx.priority):
            if remedy == "stale":
                if await self._serve_stale(ctx, send, key):
                    ctx.notes.quota = "fallback"
                    return Outcome(200)
            elif remedy == "fallback":
                moved = await self._fall_back(ctx, send)
                if moved is not None:
                    return moved
            else:
                try:
                    ticket = await self._quota.wait_admit(ctx, retry_after)
                except CallRefused as refusal:
                    ctx.notes.quota = "refused"
                    return Outcome(await send_refusal(send, ctx, refusal))
                ctx.notes.quota = "queued"
                return ticket
        ctx.notes.quota = "refused"
        wait = retry_after if math.isfinite(retry_after) else None
        refused = CallRefused(429, f"Quota exceeded for {ctx.call.model}.", retry_after=wait)
        return Outcome(await send_refusal(send, ctx, refused))

    async def _fall_back(self, ctx: CallContext, send: Send) -> Outcome | None:
        """Serve the call with the first model of its fallback chain that has room now, saying
        so (``X-Knowctl-Model``); None when none has. Its answer is not cached under the asked
        model's key, and a fallback does not fall back again."""
        for model in self._fallbacks.chain(ctx.call.model, ctx.header):
            call, raw_path, body = retarget(ctx.call, ctx.raw_path, ctx.payload, model)
            if not self._upstream.serves(call):
                continue
            moved = dataclasses.replace(
                ctx,
                call=call,
                raw_path=raw_path,
                body=ctx.body if body is None else body,
                payload=ctx.payload if body is None else orjson.loads(body),
                response_headers=[*ctx.response_headers, (MODEL_HEADER, model.encode())],
                deployment=None,
            )
            got = await self._quota.try_admit(moved)
            if not isinstance(got, Ticket):
                continue
            ctx.notes.quota = "model-fallback"
            outcome = await self._spend(moved, send, None, None, got, 0)
            ctx.reported, ctx.unsettled = moved.reported, moved.unsettled
            return outcome
        return None

    async def _spend(
        self, ctx: CallContext, send: Send, key: str | None, keep: Keep | None, ticket: Ticket, attempt: int
    ) -> Outcome:
        """Forward the admitted call, then settle its reservation and keep a complete answer."""
        failover = self._quota.alternatives(ctx) and self._retries.may_retry(attempt)
        try:
            with self._retries.attempting(attempt):
                outcome = await self._forward(ctx, send, key, failover)
        except BaseException:
            await self._quota.settle(ticket, None)  # keep the reservation: it may have been spent
            raise
        # After the answer, the quota's reconciliation and the cache write do not depend on
        # each other: side by side, their commands share one store round trip.
        saving = None
        if keep is not None and outcome.answer is not None:
            saving = asyncio.ensure_future(keep(outcome.answer))
        try:
            if outcome.spent:
                await self._quota.settle(ticket, outcome.usage)
                if outcome.usage is None:
                    ctx.unsettled = ticket  # e.g. a background interaction, reconciled when seen
            else:
                self._quota.release(ticket)
            if outcome.provider_refused:
                self._quota.upstream_exhausted(
                    ticket.model, outcome.retry_delay, ticket.lane or ticket.deployment
                )
            elif outcome.failed:
                self._quota.upstream_failed(ticket.model, ticket.lane or ticket.deployment)
        finally:
            if saving is not None:
                await saving
        return outcome

    async def _serve_stale(self, ctx: CallContext, send: Send, key: str | None) -> bool:
        if key is None:
            return False
        stale = await self._cache.stale(key)
        if stale is None:
            return False
        self._quota.record_fallback(ctx.call.model or "-")
        await send_cached(send, ctx, stale)
        return True

    async def _forward(
        self, ctx: CallContext, send: Send, key: str | None, failover: bool = False
    ) -> Outcome:
        """Call upstream and pass the answer on as it arrives. With ``failover``, a 429, a 5xx
        or a failure before the first byte is not passed on: the outcome says to try again."""
        outgoing = OutgoingCall(
            ctx.method, ctx.call, ctx.raw_path, ctx.query, ctx.headers, ctx.body, ctx.deployment, ctx.priority
        )
        own = self._upstream.own_credentials(ctx.call, ctx.deployment)
        headers_sent = False
        try:
            async with self._upstream.send(outgoing) as response:
                self._answered(ctx, response.status)
                headers = [*self._upstream.answer_headers(response, outgoing, own), *ctx.response_headers]
                if response.status != 200:
                    body = await response.read()
                    if failover and (response.status == 429 or response.status >= 500):
                        return Outcome(
                            response.status,
                            provider_refused=response.status == 429,
                            retry_delay=parse_retry_delay(body) if response.status == 429 else None,
                            spent=provider_counted(response.status, body),
                            failed=response.status >= 500,
                            failover=True,
                        )
                    return await self._upstream_error(ctx, send, key, response.status, body, headers, own)
                headers.append((CACHE_HEADER, b"MISS"))
                ctx.notes.cache = ctx.notes.cache or "MISS"
                if not ctx.streaming:
                    body = await response.read()
                    read = surfaces.read_answer(ctx, body)
                    if read is None:  # nothing is sent yet: a clear error beats a broken 200
                        raise UpstreamFailure(502, "upstream sent an answer that is not valid JSON")
                    await respond(send, 200, body, _content_type(headers), _without_content_type(headers))
                    return _outcome(ctx, read)
                pieces = drain(response)
                # The head waits for the first event and leaves with it, in one write (one
                # wake-up of the client); a stream that breaks before it gets a clean error
                # status instead of a 200 that ends in nothing.
                first = await anext(pieces, None)
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                headers_sent = True
                captured: list[bytes] = []
                size = 0
                piece = first
                while piece is not None:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                    size += len(piece)
                    if size <= MAX_CAPTURE_BYTES:
                        captured.append(piece)
                    piece = await anext(pieces, None)
                await send({"type": "http.response.body", "body": b""})
                if size > MAX_CAPTURE_BYTES:
                    return Outcome(200)  # usage unknown: the reservation stands
                read = surfaces.read_stream(ctx, b"".join(captured))
                return Outcome(200) if read is None else _outcome(ctx, read)
        except UpstreamFailure as failure:  # counted and logged by UpstreamClient.send
            if headers_sent:
                raise  # too late for a status: cut the connection, the answer is incomplete
            spent = failure.status != 503  # 503: the call never left
            if failover:
                return Outcome(failure.status, spent=spent, failed=True, failover=True)
            if await self._serve_stale(ctx, send, key):
                return Outcome(200, failed=True)
            sent = await send_refusal(send, ctx, CallRefused(failure.status, failure.message))
            return Outcome(sent, spent=spent, failed=True)

    async def _upstream_error(
        self,
        ctx: CallContext,
        send: Send,
        key: str | None,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        own: bool,
    ) -> Outcome:
        if status >= 500 and await self._serve_stale(ctx, send, key):
            return Outcome(200, failed=True)  # the provider failed: a stale answer beats its error
        if status != 429:
            sent = await send_upstream_error(send, ctx, status, body, headers, own_credentials=own)
            return Outcome(sent, spent=provider_counted(status, body), failed=status >= 500)
        # The provider's own quota ran dry: a stale answer beats an error.
        retry_delay = parse_retry_delay(body)
        if await self._serve_stale(ctx, send, key):
            return Outcome(200, provider_refused=True, retry_delay=retry_delay)
        if retry_delay is not None:
            headers.append((b"retry-after", retry_after_header(retry_delay).encode()))
        sent = await send_upstream_error(send, ctx, status, body, headers, own_credentials=own)
        return Outcome(sent, provider_refused=True, retry_delay=retry_delay)


def _outcome(ctx: CallContext, read: surfaces.Read) -> Outcome:
    """A finished answer: its usage and, if it is a complete success, the answer to keep."""
    ctx.reported = read.reported
    answer = Answer(read.chunks, surface=ctx.call.surface.value) if read.complete else None
    return Outcome(200, answer, usage=read.usage)


def _content_type(headers: list[tuple[bytes, bytes]]) -> bytes:
    return next((v for k, v in headers if k == b"content-type"), b"application/json")


def _without_content_type(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k != b"content-type"]
