"""Embedding calls, one text at a time (docs/architecture.md, the embedding walk): the caller's
limits, each text's embedding looked up, only the texts not seen before sent upstream in one
call under provider quota, the answer put back together in the caller's order."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from knowctl.daemon.context import CallContext, Ticket
from knowctl.daemon.contracts import CallRefused, EmbeddingItems, QuotaGate
from knowctl.daemon.pipeline.replies import CACHE_HEADER, send_refusal, send_upstream_error
from knowctl.daemon.upstream.client import UPSTREAM_HEADER, OutgoingCall, UpstreamClient, UpstreamFailure
from knowctl.net.asgi import JSON, Send, respond
from knowctl.policy import embeddings
from knowctl.policy.paths import Surface
from knowctl.policy.quota import provider_counted
from knowctl.policy.retries import RetryBudget
from knowctl.policy.wire import openai

log = logging.getLogger("knowctl.embed")

# Counts a call against its caller's limits; raises CallRefused when over.
Admit = Callable[[CallContext], Awaitable[None]]
# An embedding call that cannot be taken apart, forwarded whole under provider quota.
Whole = Callable[[CallContext, Send], Awaitable[int]]
# The header that says how many of a call's texts were found kept.
ITEMS_HEADER = b"x-knowctl-cache-items"


class _Moved:
    """The deployment refused or failed the call before anything reached the caller: try another."""


class Embeddings:
    def __init__(
        self,
        upstream: UpstreamClient,
        quota: QuotaGate,
        items: EmbeddingItems,
        answered: Callable[[CallContext, int], None],
        batch_as_one_call: frozenset[str],
        retries: RetryBudget | None = None,
    ) -> None:
        self._retries = retries or RetryBudget()
        self._upstream = upstream
        self._quota = quota
        self._items = items
        self._answered = answered
        self._as_one = batch_as_one_call

    async def __call__(self, ctx: CallContext, send: Send, admit: Admit, whole: Whole) -> int:
        await admit(ctx)
        scope = ctx.identity.cache_scope if ctx.identity is not None else None
        batch = None
        if self._items.enabled and scope is not None and ctx.payload is not None:
            batch = embeddings.split(ctx.call, ctx.payload, scope)
        if batch is None:  # not cacheable per text: forwarded whole
            return await whole(ctx, send)
        found = await self._items.get_many(batch.keys)
        missing = [i for i, vector in enumerate(found) if vector is None]
        counted = f"{len(found) - len(missing)}/{len(found)}".encode()
        if not missing:
            ctx.notes.cache = "HIT"
            return await self._answer(ctx, send, [v for v in found if v is not None], None, b"HIT", counted)
        model = ctx.call.model or "-"
        ctx.requests = 1 if model in self._as_one else len(missing)
        ctx.input_texts = [batch.texts[i] for i in missing]
        body = embeddings.request_for(ctx.call, ctx.payload or {}, batch, missing)
        attempt = 0
        self._retries.started()
        try:
            while True:
                ticket = await self._admit(ctx)
                # A 429, a 5xx or no answer moves the call to another deployment, as a
                # generation's does (docs/architecture.md, "Upstream deployments"), within the
                # retry budget: nothing has reached the caller.
                failover = self._quota.alternatives(ctx) and self._retries.may_retry(attempt)
                with self._retries.attempting(attempt):
                    outcome = await self._ask(ctx, send, ticket, body, len(missing), failover)
                if not isinstance(outcome, _Moved):
                    break
                attempt += 1
        finally:
            self._retries.finished()
        if isinstance(outcome, int):
            return outcome
        vectors, usage = outcome
        try:
            for i, vector in zip(missing, vectors, strict=True):
                found[i] = vector
            await self._items.put_many([(batch.keys[i], v) for i, v in zip(missing, vectors, strict=True)])
            ctx.notes.cache = "MISS"
            label = b"MISS" if len(missing) == len(found) else b"HIT-PARTIAL"
            complete = [v for v in found if v is not None]
            return await self._answer(ctx, send, complete, usage, label, counted)
        finally:
            await self._quota.settle(ticket, openai.usage_metadata(usage))

    async def _ask(
        self, ctx: CallContext, send: Send, ticket: Ticket, body: bytes, texts: int, failover: bool
    ) -> tuple[list[bytes], dict[str, Any] | None] | int | _Moved:
        """One upstream call for the missing texts: their vectors and usage (settled by the
        caller once answered), or the status of the error passed on (settled here), or with
        ``failover`` a move to another deployment (settled, and that one held)."""
        outgoing = OutgoingCall(
            ctx.method, ctx.call, ctx.raw_path, ctx.query, ctx.headers, body, ctx.deployment, ctx.priority
        )
        own = self._upstream.own_credentials(ctx.call, ctx.deployment)
        try:
            async with self._upstream.send(outgoing) as response:
                self._answered(ctx, response.status)
                answer = await response.read()
                headers = [*self._upstream.answer_headers(response, outgoing, own), *ctx.response_headers]
        except UpstreamFailure as failure:
            await self._settle(ticket, failure.status != 503, failed=True)
            if failover:
                return _Moved()
            return await send_refusal(send, ctx, CallRefused(failure.status, failure.message))
        if response.status != 200:
            refused, failed = response.status == 429, response.status >= 500
            await self._settle(
                ticket, provider_counted(response.status, answer), refused=refused, failed=failed
            )
            if failover and (refused or failed):
                return _Moved()
            return await send_upstream_error(send, ctx, response.status, answer, headers, own_credentials=own)
        got = embeddings.vectors_of(ctx.call, answer, texts)
        if got is None:
            await self._settle(ticket, True)
            mismatch = "upstream sent an embedding answer that does not match the call"
            return await send_refusal(send, ctx, CallRefused(502, mismatch))
        # The answer is put together here: it names the deployment as a passed-on one would.
        ctx.response_headers.extend(h for h in headers if h[0] == UPSTREAM_HEADER)
        return got

    async def _settle(
        self, ticket: Ticket, spent: bool, *, refused: bool = False, failed: bool = False
    ) -> None:
        """A call that brought no vectors: its reservation kept if the provider spent it, the
        deployment held after a 429 and taken out after a failure."""
        if spent:
            await self._quota.settle(ticket, None)
        else:
            self._quota.release(ticket)
        if refused:
            self._quota.upstream_exhausted(ticket.model, None, ticket.lane or ticket.deployment)
        elif failed:
            self._quota.upstream_failed(ticket.model, ticket.lane or ticket.deployment)

    async def _admit(self, ctx: CallContext) -> Ticket:
        got = await self._quota.try_admit(ctx)
        if isinstance(got, Ticket):
            ctx.notes.quota = "admitted"
            return got
        try:
            ticket = await self._quota.wait_admit(ctx, got)
        except CallRefused:
            ctx.notes.quota = "refused"
            raise
        ctx.notes.quota = "queued"
        return ticket

    async def _answer(
        self,
        ctx: CallContext,
        send: Send,
        vectors: list[bytes],
        usage: object,
        label: bytes,
        counted: bytes,
    ) -> int:
        usage = usage if ctx.call.surface is Surface.OPENAI else None
        body = embeddings.compose(ctx.call, ctx.payload or {}, vectors, usage)
        headers = [*ctx.response_headers, (CACHE_HEADER, label), (ITEMS_HEADER, counted)]
        await respond(send, 200, body, JSON, headers)
        return 200
