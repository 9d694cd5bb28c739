"""Resources a caller creates through the gateway, each its creator's alone (files, context
caches, batch jobs, long-running operations; docs/architecture.md, "Resources per caller").

Where the gateway calls Google with its own credentials: a creation's answer names the
resource, recorded with its owner and the deployment that holds it; reading, updating,
downloading and deleting one is for its owner, at that deployment; a listing shows the
caller's own only; a body that names another's (a file URI, a cache) is refused before it
leaves. With the caller's own credentials the resources are its project's: Google decides.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from knowctl.daemon.context import CallContext
from knowctl.daemon.contracts import CallRefused, Held, Resources
from knowctl.daemon.pipeline.interactions import owner_of
from knowctl.daemon.upstream.client import OutgoingCall, UpstreamClient, UpstreamFailure, response_headers
from knowctl.net.asgi import Message, Send, respond
from knowctl.policy.paths import Surface, owned_name
from knowctl.policy.resources import named_caches, named_files, named_operations, produced_files

# Forwards a call as it is and says what came of it (ModelCallHandler._pass_on).
PassOn = Callable[[CallContext, Send], Awaitable[Any]]

# What a listing or a creation's answer may hold to be read (a page is far smaller).
MAX_READ_BYTES = 8 * 1024 * 1024
# Google keeps an uploaded file for 48 hours; its owner is remembered as long.
FILE_TTL_S = 48 * 3600.0
# A cache whose expiry cannot be read is remembered this long (Google's default TTL is 1 h).
CACHE_TTL_S = 3600.0
# Batch jobs run up to a day or two and are read for their results after; operations alike.
JOB_TTL_S = 30 * 86400.0
# The model actions whose answer names a resource the caller now owns (a batch, an operation).
CREATING_ACTIONS = frozenset({"batchGenerateContent", "asyncBatchEmbedContent", "predictLongRunning"})
# Past its expiry, a cache's record stays a little longer: a clock apart must not free it early.
EXPIRY_MARGIN_S = 300.0


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of owned resource: its listings' keys, how long its owner is remembered, and
    Google's answer for one that does not exist or is not the caller's (the same for both:
    nothing to learn from it)."""

    listed_as: tuple[str, ...]
    missing: str  # with {name}
    status: int = 403
    ttl_s: float = JOB_TTL_S

    def gone(self, name: str) -> CallRefused:
        return CallRefused(self.status, self.missing.format(name=name))


FILES = Kind(
    ("files",), "You do not have permission to access the File {name} or it may not exist.", 403, FILE_TTL_S
)
CACHES = Kind(("cachedContents",), "CachedContent not found (or permission denied): {name}")
# The Gemini API lists batches as operations; Vertex as batchPredictionJobs.
BATCHES = Kind(("operations", "batchPredictionJobs"), "Batch {name} was not found.", 404)
OPERATIONS = Kind(("operations",), "Operation {name} was not found.", 404)
KINDS = {
    Surface.FILES: FILES,
    Surface.CACHES: CACHES,
    Surface.BATCHES: BATCHES,
    Surface.OPERATIONS: OPERATIONS,
}


class _HeldAnswer:
    """An answer kept back until the gateway has recorded what it says, up to
    ``MAX_READ_BYTES``; a larger one goes on as it comes, and is not read."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0
        self._held: list[Message] = []
        self._size = 0
        self._passing = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        if self._passing:
            await self._send(message)
            return
        self._held.append(message)
        self._size += len(message.get("body", b""))
        if self._size > MAX_READ_BYTES:
            self._passing = True
            await self.release()

    @property
    def body(self) -> bytes | None:
        """The whole answer's body, or None when it was too large to hold."""
        if self._passing:
            return None
        return b"".join(m.get("body", b"") for m in self._held if m["type"] == "http.response.body")

    async def release(self) -> None:
        held, self._held = self._held, []
        for message in held:
            await self._send(message)


class OwnedCalls:
    def __init__(self, resources: Resources, upstream: UpstreamClient, pass_on: PassOn) -> None:
        self._resources = resources
        self._upstream = upstream
        self._pass_on = pass_on

    def guarded(self, ctx: CallContext) -> bool:
        """Whether the gateway keeps the owners (it calls Google with its own credentials)."""
        return self._upstream.own_credentials(ctx.call, ctx.deployment)

    async def access(self, ctx: CallContext, send: Send) -> int:
        """A listing (filtered), or one resource read, downloaded, updated or deleted."""
        call, kind = ctx.call, KINDS[ctx.call.surface]
        guarded = self.guarded(ctx)
        if call.resource is None:
            if ctx.method == "POST":
                return await self.create(ctx, send, guarded)
            if not guarded:
                return int((await self._pass_on(ctx, send)).sent)
            return await self._list(ctx, send, kind)
        if guarded:
            held = await self._resources.find(call.resource, owner_of(ctx))
            if held is None:
                raise kind.gone(call.resource)
            ctx.deployment = held.deployment
        if guarded and ctx.method == "GET" and call.surface in (Surface.BATCHES, Surface.OPERATIONS):
            # A finished job names the files it made (a batch's responses, a video): its
            # owner's, recorded as the owner reads it, so the owner alone may fetch them.
            kept = await self._pass_holding(ctx, send)
            try:
                if kept.status == 200 and kept.body is not None and b"files/" in kept.body:
                    await self._record_produced(ctx, kept.body)
            finally:
                await kept.release()
            return kept.status
        if ctx.method == "GET" or call.action is not None:  # a read, a download, a cancel
            return int((await self._pass_on(ctx, send)).sent)
        # Recorded (or forgotten) before the answer goes on: the caller's next call finds it so.
        kept = await self._pass_holding(ctx, send)
        try:
            if kept.status == 200 and guarded and ctx.method == "DELETE":
                await self._resources.forget(call.resource)
            elif kept.status == 200 and guarded and kept.body is not None:  # a cache's new expiry
                await self.record(ctx, kept.body, owner_of(ctx))
        finally:
            await kept.release()
        return kept.status

    async def create(self, ctx: CallContext, send: Send, guarded: bool) -> int:
        kept = await self._pass_holding(ctx, send)
        try:
            if kept.status == 200 and guarded and kept.body is not None:
                await self.record(ctx, kept.body, owner_of(ctx))
        finally:
            await kept.release()
        return kept.status

    async def creating(self, ctx: CallContext, send: Send, forward: Callable[[Send], Awaitable[int]]) -> int:
        """A model action whose answer names a new batch or operation (``CREATING_ACTIONS``),
        forwarded by ``forward`` (with its quota); the resource recorded as its caller's
        before the answer goes on, so the caller's next call finds it."""
        kept = _HeldAnswer(send)
        try:
            sent = await forward(kept)
            if kept.status == 200 and kept.body is not None and self.guarded(ctx):
                await self.record(ctx, kept.body, owner_of(ctx))
        finally:
            await kept.release()
        return sent

    async def record(self, ctx: CallContext, body: bytes, owner: str) -> None:
        """Remember the owner of the resource an answer describes, for as long as it lives."""
        found = _json(body)
        item = found.get("file", found) if ctx.call.surface is Surface.FILES else found
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or "/" not in name:
            return
        surface = ctx.call.surface
        if surface is Surface.CACHES:
            ttl = _cache_ttl(item)
        else:
            ttl = KINDS[surface].ttl_s if surface in KINDS else JOB_TTL_S
        held = Held(owner, ctx.deployment or self._upstream.deployment_name(ctx.call))
        await self._resources.remember(owned_name(name), held, ttl)

    async def _record_produced(self, ctx: CallContext, body: bytes) -> None:
        owner, deployment = owner_of(ctx), ctx.deployment or self._upstream.deployment_name(ctx.call)
        for name in sorted(produced_files(_json(body))):
            if await self._resources.find(name, owner) is None:
                await self._resources.remember(name, Held(owner, deployment), FILE_TTL_S)

    async def check_named(self, ctx: CallContext) -> None:
        """Refuse a call whose body names a file or a cache its caller does not own."""
        if not self.guarded(ctx):
            return
        named = (
            (FILES, named_files(ctx.payload)),
            (CACHES, named_caches(ctx.payload)),
            (OPERATIONS, named_operations(ctx.payload)),
        )
        for kind, names in named:
            ordered = sorted(names)
            if not ordered:
                continue
            owned = await self._resources.owned(ordered, owner_of(ctx))
            for name, mine in zip(ordered, owned, strict=True):
                if not mine:
                    raise kind.gone(name)

    async def _pass_holding(self, ctx: CallContext, send: Send) -> _HeldAnswer:
        """Pass the call on, its answer held back (released by the caller once it has
        recorded what the answer says)."""
        kept = _HeldAnswer(send)
        await self._pass_on(ctx, kept)
        return kept

    async def _list(self, ctx: CallContext, send: Send, kind: Kind) -> int:
        outgoing = OutgoingCall(
            ctx.method, ctx.call, ctx.raw_path, ctx.query, ctx.headers, ctx.body, ctx.deployment, ctx.priority
        )
        try:
            async with self._upstream.send(outgoing) as response:
                body = await response.read()
                headers = response_headers(response, True)
        except UpstreamFailure as failure:
            raise CallRefused(failure.status, failure.message) from None
        if response.status == 200:
            body = await self._only_owned(body, owner_of(ctx), kind) if len(body) <= MAX_READ_BYTES else b"{}"
        return await answer(send, response.status, response.header(b"content-type"), body, headers)

    async def _only_owned(self, body: bytes, owner: str, kind: Kind) -> bytes:
        """The listing with only ``owner``'s resources (the page token stays: the next page is
        filtered alike). An answer the gateway cannot read leaks nothing: it is empty."""
        page = _json(body)
        out: dict[str, Any] = {}
        for listed_as in kind.listed_as:
            items = page.get(listed_as)
            if not isinstance(items, list):
                continue
            names = [item.get("name") if isinstance(item, dict) else None for item in items]
            keys = [owned_name(n) if isinstance(n, str) and n else None for n in names]
            owned = iter(await self._resources.owned([k for k in keys if k], owner))
            kept = [item for item, k in zip(items, keys, strict=True) if k and next(owned)]
            if kept:
                out[listed_as] = kept
        if isinstance(page.get("nextPageToken"), str):
            out["nextPageToken"] = page["nextPageToken"]
        return orjson.dumps(out)


def _json(body: bytes) -> dict[str, Any]:
    try:
        found = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


def _cache_ttl(item: dict[str, Any]) -> float:
    """Seconds until the cache an answer describes expires (its ``expireTime``), plus a margin."""
    expires = item.get("expireTime")
    if isinstance(expires, str):
        try:
            at = dt.datetime.fromisoformat(expires.replace("Z", "+00:00"))
            left = (at - dt.datetime.now(dt.UTC)).total_seconds()
            return max(left, 0.0) + EXPIRY_MARGIN_S
        except ValueError:
            pass
    return CACHE_TTL_S + EXPIRY_MARGIN_S


async def answer(
    send: Send, status: int, content_type: bytes | None, body: bytes, headers: list[tuple[bytes, bytes]]
) -> int:
    """An upstream answer passed on with the headers kept (the gateway does its own framing)."""
    kept = [(k, v) for k, v in headers if k != b"content-type"]
    await respond(send, status, body, content_type or b"application/json", kept)
    return status
