"""Interactions through the gateway (docs/architecture.md, resources per caller): creating one
runs the generation pipeline; reading, cancelling, deleting or continuing one is for its owner
alone, checked before anything reaches Google."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from knowctl.daemon.context import CallContext, Ticket
from knowctl.daemon.contracts import CallRefused, Interactions, Owned
from knowctl.net.asgi import Message, Send
from knowctl.policy.wire import interactions as wire

# Forwards a call as it is and says what came of it (ModelCallHandler._pass_on).
PassOn = Callable[[CallContext, Send], Awaitable[Any]]
# Runs a generation call through the pipeline (Generation.__call__ with the caller's limits).
Generate = Callable[[CallContext, Send], Awaitable[int]]
# Corrects a reservation settled without usage, once the usage is seen (QuotaGate.reconcile).
Reconcile = Callable[[Ticket, dict[str, int]], Awaitable[None]]

# An answer this large is not read for its usage (a GET's Interaction is far smaller).
MAX_READ_BYTES = 4 * 1024 * 1024


def owner_of(ctx: CallContext) -> str:
    """Who the interaction belongs to: a key's user, else the pass-through credential (its
    hash), else the caller's address."""
    identity = ctx.identity
    if identity is None:
        return "anonymous:" + ctx.client_ip
    return f"{identity.kind}:{identity.credential or identity.user}"


def not_found(interaction_id: str) -> CallRefused:
    # The same answer for an unknown id and for someone else's: nothing to learn from it.
    return CallRefused(404, f"Interaction {interaction_id} was not found.")


class InteractionCalls:
    def __init__(self, book: Interactions, generate: Generate, pass_on: PassOn, reconcile: Reconcile) -> None:
        self._book = book
        self._generate = generate
        self._pass_on = pass_on
        self._reconcile = reconcile

    async def create(self, ctx: CallContext, send: Send) -> int:
        owner = owner_of(ctx)
        previous = wire.previous_id(ctx.payload)
        if previous is not None:
            earlier = await self._book.find(previous, owner)
            if earlier is None:
                raise not_found(previous)
            ctx.history_tokens = earlier.tokens
        status = await self._generate(ctx, send)
        reported = ctx.reported
        payload = ctx.payload or {}
        if (
            isinstance(reported, wire.Reported)
            and reported.interaction_id
            and payload.get("store") is not False
        ):
            tokens = _conversation_tokens(reported.usage)
            unsettled = None
            if tokens is None:  # not finished yet (background): what is known so far
                tokens, unsettled = ctx.history_tokens, ctx.unsettled
            record = Owned(owner, ctx.call.model or "-", tokens, unsettled)
            await self._book.remember(reported.interaction_id, record)
        return status

    async def access(self, ctx: CallContext, send: Send) -> int:
        """GET (also resuming a stream), DELETE or cancel of one interaction."""
        interaction_id = ctx.call.resource or ""
        record = await self._book.find(interaction_id, owner_of(ctx))
        if record is None:
            raise not_found(interaction_id)
        status = 0
        body = bytearray()

        async def watching(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status == 200 and len(body) < MAX_READ_BYTES:
                body.extend(message.get("body", b""))
            await send(message)

        passed = await self._pass_on(ctx, watching)
        if status == 200 and ctx.method == "DELETE":
            await self._book.forget(interaction_id)
        elif status == 200 and ctx.method == "GET" and "stream=true" not in ctx.query:
            found = wire.read_interaction(bytes(body))
            usage = found.usage if found else None
            tokens = _conversation_tokens(usage)
            if usage is not None and tokens is not None and (tokens != record.tokens or record.unsettled):
                # A background run finished: its reservation made its real usage, its record
                # the conversation's tokens. Two daemons doing both at once do it alike.
                if record.unsettled is not None:
                    await self._reconcile(record.unsettled, usage)
                await self._book.remember(interaction_id, Owned(record.owner, record.model, tokens))
        return int(passed.sent)


def _conversation_tokens(usage: dict[str, int] | None) -> int | None:
    """The conversation so far after this turn: its input (history included) and output."""
    if not usage or "promptTokenCount" not in usage:
        return None
    return (
        usage["promptTokenCount"] + usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)
    )
