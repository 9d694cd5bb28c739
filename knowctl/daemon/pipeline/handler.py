"""The model-call route: check the request and its caller, then generate or forward."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import orjson

from knowctl.daemon.context import CallContext, Ticket, notes_of
from knowctl.daemon.contracts import (
    Callers,
    CallRefused,
    EmbeddingItems,
    Interactions,
    QuotaGate,
    Resources,
    ResponseCache,
)
from knowctl.daemon.pipeline.embedding import Embeddings
from knowctl.daemon.pipeline.files import FileCalls, FilesConfig
from knowctl.daemon.pipeline.generation import Generation
from knowctl.daemon.pipeline.interactions import InteractionCalls
from knowctl.daemon.pipeline.live import LiveCalls, LiveConfig
from knowctl.daemon.pipeline.owned import CREATING_ACTIONS, OwnedCalls
from knowctl.daemon.pipeline.replies import send_error, send_refusal, send_upstream_error
from knowctl.daemon.upstream.client import (
    OutgoingCall,
    UpstreamClient,
    UpstreamFailure,
    drain,
)
from knowctl.net.asgi import (
    BodyTooLarge,
    ClientDisconnected,
    Message,
    Receive,
    Scope,
    Send,
    read_body,
    respond,
    respond_error,
)
from knowctl.policy.callers import presented_credentials
from knowctl.policy.fallback import Fallbacks
from knowctl.policy.paths import FILE_UPLOAD, OPENAI_MODELS, PREDICT, ApiCall, Surface, allowed_methods
from knowctl.policy.priority import Priority, effective_priority
from knowctl.policy.quota import provider_counted
from knowctl.policy.requests import body_problem
from knowctl.policy.retries import RetryBudget
from knowctl.policy.wire import interactions as interactions_wire
from knowctl.policy.wire import openai as openai_wire

log = logging.getLogger("knowctl.proxy")

# HTTP status 499 (client closed request, as nginx logs it) for the metrics only.
CLIENT_CLOSED = 499
# Objects and arrays one request body may hold (what a real prompt needs is far less).
MAX_JSON_CONTAINERS = 100_000


@dataclass(slots=True)
class CapturedResponse:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


class Passed(NamedTuple):
    """What passing one call on came to."""

    sent: int  # the status the caller got
    provider: int  # the provider's status; 0 when it did not answer
    spent: bool  # whether the provider may have counted the call against its quota
    moved: bool = False  # refused or failed with nothing sent: another deployment may serve it


@dataclass(frozen=True, slots=True)
class HandlerConfig:
    """What the model-call route needs of the settings (knowctl.daemon.config.handler_config)."""

    max_body_bytes: int
    default_priority: Priority
    live: LiveConfig  # the Live API's session limits
    allowed_actions: frozenset[str]  # actions forwarded beyond the known ones
    batch_as_one_call: frozenset[str] = frozenset()  # models whose embedding batch counts once
    fallbacks: Fallbacks = field(default_factory=Fallbacks)  # model fallback chains, remedies' order


# Bodies that name a resource hold one of these; only they are searched (policy/resources.py).
NAMING_MARKERS = (b"files/", b"achedContent", b"perationName", b"peration_name")
# Collections of resources their creators own, served by pipeline/owned.py once the body is read.
OWNED_SURFACES = frozenset({Surface.CACHES, Surface.BATCHES, Surface.OPERATIONS})


def _upload_by_capability(ctx: CallContext) -> bool:
    """An upload's chunk that names its upload and no credential."""
    return (
        ctx.call.action == FILE_UPLOAD
        and "upload_id=" in ctx.query
        and not presented_credentials(ctx.headers, ctx.query)
    )


class ModelCallHandler:
    """Entry of every model call: check it, identify and limit the caller, then either run
    the generation pipeline or forward the call as it is."""

    def __init__(
        self,
        config: HandlerConfig,
        upstream: UpstreamClient,
        *,
        callers: Callers,
        cache: ResponseCache,
        quota: QuotaGate,
        interactions: Interactions,
        items: EmbeddingItems,
        resources: Resources,
        only_known_actions: bool = False,
    ) -> None:
        self._max_body = config.max_body_bytes
        self._default_priority = config.default_priority
        self._upstream = upstream
        self._callers = callers
        self._quota = quota
        retries = self._retries = RetryBudget()  # one budget for every call that may move elsewhere
        self._generation = Generation(
            upstream, cache, quota, callers.upstream_answered, retries=retries, fallbacks=config.fallbacks
        )
        self._embeddings = Embeddings(
            upstream, quota, items, callers.upstream_answered, config.batch_as_one_call, retries
        )
        self._interactions = InteractionCalls(interactions, self._generate, self._pass_on, quota.reconcile)
        self._owned = OwnedCalls(resources, upstream, self._pass_on)
        self._files = FileCalls(FilesConfig(config.max_body_bytes), resources, upstream, self._owned)
        self.live_calls = LiveCalls(config.live, upstream, callers, quota, self._check_limits)
        self._allowed = config.allowed_actions
        self._batch_as_one = config.batch_as_one_call
        # Set where the gateway calls Google with its own credentials (keys mode); callers
        # who bring their own credentials pay for whatever they send.
        self._forwards_only_known = only_known_actions

    async def __call__(self, scope: Scope, receive: Receive, send: Send, call: ApiCall) -> int:
        method: str = scope["method"]
        allowed = allowed_methods(call)
        if method not in allowed:
            return await send_error(
                send,
                call,
                405,
                f"Method {method} is not allowed on {scope['path']}; use {', '.join(allowed)}.",
                [(b"allow", ", ".join(allowed).encode())],
            )
        if (
            call.surface is Surface.MODELS
            and call.action is not None
            and self._forwards_only_known
            and call.action not in self._allowed
        ):
            # The gateway pays for what it forwards in keys mode: only actions it knows go.
            await respond_error(send, 404, f"The requested path {scope['path']} was not found.")
            return 404
        ctx = self._context(scope, call, method)
        header = ctx.header
        if call.surface is Surface.FILES and _upload_by_capability(ctx):
            # The SDK sends an upload's chunks without its key, as to Google: the upload URL's
            # id, unguessable and handed to its starter alone, is the credential.
            return await self._file_call(ctx, receive, send)
        try:
            # Who is calling is known from the head alone: a caller the gateway refuses costs
            # it no body read, no parse and no buffer (the body is left unread, and the
            # connection closes so its bytes are never taken in).
            await self._identify(ctx)
        except CallRefused as refusal:
            if method == "POST":
                refusal.headers.append((b"connection", b"close"))
            return await send_refusal(send, ctx, refusal)
        if call.surface is Surface.FILES:
            return await self._file_call(ctx, receive, send)
        if method in ("POST", "PATCH"):
            try:
                ctx.body = await read_body(receive, self._max_body, header.get("content-length"))
            except BodyTooLarge:
                message = f"Request body exceeds the limit of {self._max_body} bytes."
                return await send_error(send, call, 413, message, [(b"connection", b"close")])
            except ClientDisconnected:
                return CLIENT_CLOSED
            problem, ctx.payload = self._check_body(call, ctx.body)
            if problem is None and call.surface is not Surface.MODELS:
                problem = self._name_model(ctx)
            if problem is not None:
                return await send_error(send, call, 400, problem)
            if ctx.payload is not None and any(marker in ctx.body for marker in NAMING_MARKERS):
                try:
                    await self._owned.check_named(ctx)
                except CallRefused as refusal:
                    return await send_refusal(send, ctx, refusal)
        if not self._upstream.serves(ctx.call):
            model = ctx.call.model or "this call"
            return await send_error(
                send, call, 404, f"No upstream of this gateway serves {model} on this API."
            )
        try:
            if call.surface in OWNED_SURFACES:
                await self._check_limits(ctx)
                return await self._owned.access(ctx, send)
            if call.surface is Surface.INTERACTIONS:
                if call.generates:
                    return await self._interactions.create(ctx, send)
                await self._check_limits(ctx)
                return await self._interactions.access(ctx, send)
            if call.embeds and method == "POST":
                return await self._embeddings(ctx, send, self._check_limits, self._whole_batch)
            if call.generates:
                return await self._generation(ctx, send, self._check_limits)
            # Every call that reaches Google counts against its caller's limits.
            await self._check_limits(ctx)
            if call.spends_quota:
                if call.action == PREDICT:
                    return await self._whole_batch(ctx, send)
                if call.action in CREATING_ACTIONS:  # a batch or an operation: its caller's
                    return await self._owned.creating(
                        ctx, send, lambda watched: self._forward_with_quota(ctx, watched, self._quota)
                    )
                return await self._forward_with_quota(ctx, send, self._quota)
        except CallRefused as refusal:
            return await send_refusal(send, ctx, refusal)
        return await self._forward(ctx, send)

    async def live(self, scope: Scope, receive: Receive, send: Send, call: ApiCall) -> int:
        """A Live API WebSocket, its handshake read: identified from its head as an HTTP call,
        then relayed (pipeline/live.py). The close code."""
        ctx = self._context(scope, call, "GET")
        refused = None
        try:
            await self._identify(ctx)
        except CallRefused as refusal:
            refused = refusal  # told in the close, after the accept: clients read it there
        return await self.live_calls(ctx, receive, send, refused)

    async def _file_call(self, ctx: CallContext, receive: Receive, send: Send) -> int:
        """Files: bodies read (an upload's start) or streamed (its chunks) by the flow itself.
        Each call counts against its caller's limits but an upload's chunks: an upload is one
        request, however many chunks it takes."""
        if not self._upstream.serves(ctx.call):
            return await send_error(send, ctx.call, 404, "No upstream of this gateway serves files.")
        try:
            if not (ctx.call.action == FILE_UPLOAD and "upload_id=" in ctx.query):
                await self._check_limits(ctx)
            return await self._files(ctx, receive, send)
        except CallRefused as refusal:
            return await send_refusal(send, ctx, refusal)

    @staticmethod
    def _context(scope: Scope, call: ApiCall, method: str) -> CallContext:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        client = scope.get("client")
        return CallContext(
            scope=scope,
            call=call,
            method=method,
            raw_path=(scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
            query=scope["query_string"].decode("latin-1"),
            headers=headers,
            header=dict(headers),
            client_ip=client[0] if client else "",
            notes=notes_of(scope),
        )

    async def _generate(self, ctx: CallContext, send: Send) -> int:
        return await self._generation(ctx, send, self._check_limits)

    async def _whole_batch(self, ctx: CallContext, send: Send) -> int:
        """A batch forwarded whole (an embedding call the item cache cannot take apart, a
        Vertex predict): each of its items counts as a request."""
        if ctx.payload is not None:
            # Gemini's batch, OpenAI's inputs, Vertex predict's instances.
            items = (ctx.payload.get(name) for name in ("requests", "input", "instances"))
            requests = next((found for found in items if isinstance(found, list)), None)
            if isinstance(requests, list) and requests and ctx.call.model not in self._batch_as_one:
                ctx.requests = len(requests)
        return await self._forward_with_quota(ctx, send, self._quota)

    @staticmethod
    def _name_model(ctx: CallContext) -> str | None:
        """An interaction's or OpenAI call's model is in its body: named on the call once read
        (quota, cache and metrics read it there). A problem with it, or None."""
        call = ctx.call
        if call.surface in OWNED_SURFACES:
            return None  # a cache names its model in its body, but spends no generation quota
        if call.surface is Surface.INTERACTIONS:
            if not call.generates:
                return None
            named = interactions_wire.target(ctx.payload or {})
            if named is None:
                return 'An interaction names a model or an agent: set "model" or "agent".'
            ctx.call = replace(call, model=named[1])
            return None
        if call.resource == OPENAI_MODELS:
            return None
        model = openai_wire.model_name(ctx.payload)
        if model is None:
            return 'The request body must name a "model".'
        ctx.call = replace(call, model=model)
        return None

    async def generate_internal(self, ctx: CallContext) -> CapturedResponse:
        """Run a generation call the gateway makes itself (topics, pre-warming) through the
        same caller, cache, coalescing and quota path as a client's, and capture the answer."""
        captured = CapturedResponse()

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured.status = message["status"]
                captured.headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                captured.body.extend(message.get("body", b""))

        try:
            await self._identify(ctx)
            await self._generation(ctx, capture, self._check_limits)
        except CallRefused as refusal:
            await send_refusal(capture, ctx, refusal)
        return captured

    async def _identify(self, ctx: CallContext) -> None:
        """The caller's identity and the call's priority."""
        ctx.identity = await self._callers.identify(ctx)
        ctx.notes.user = ctx.identity.user
        cap = ctx.identity.max_priority
        try:
            ctx.priority = effective_priority(
                ctx.header.get("x-knowctl-priority"), self._default_priority, cap
            )
        except ValueError as exc:
            raise CallRefused(400, f"X-Knowctl-Priority: {exc}") from None

    async def _check_limits(self, ctx: CallContext) -> None:
        """The caller's own limits (only generation calls count)."""
        await self._callers.check_limits(ctx)

    @staticmethod
    def _check_body(call: ApiCall, body: bytes) -> tuple[str | None, dict[str, Any] | None]:
        """(what is wrong with the body, or None; the parsed body when it is an object)."""
        if not body and call.known_action is None and not call.generates and not call.embeds:
            return None, None  # other actions may legitimately have no body
        if body.count(b"{") + body.count(b"[") > MAX_JSON_CONTAINERS:
            # Parsed, each tiny object costs about twenty times its bytes: a body within the
            # size limit could still take hundreds of MB. Counted before it is parsed.
            return f"Request body has more than {MAX_JSON_CONTAINERS} JSON objects and arrays.", None
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return f"Invalid JSON payload received. {exc.msg} at position {exc.pos}.", None
        if call.surface is not Surface.MODELS:
            problem = None if isinstance(parsed, dict) else "The request body must be a JSON object."
            return problem, parsed if isinstance(parsed, dict) else None
        return body_problem(call.known_action, parsed), parsed if isinstance(parsed, dict) else None

    async def _forward_with_quota(self, ctx: CallContext, send: Send, quota: QuotaGate) -> int:
        """A model action that spends provider quota but is not generated through (embeddings,
        batches, predictions): admitted like a generation call, its reservation kept (these
        answers carry no usage to reconcile with) unless the provider refused the call
        before spending anything on it."""
        attempt = 0
        self._retries.started()
        try:
            while True:
                got = await quota.try_admit(ctx)
                ticket = got if isinstance(got, Ticket) else await quota.wait_admit(ctx, got)
                # A 429, a 5xx or no answer moves it to another deployment within the retry
                # budget, as a generation call (docs/architecture.md, "Upstream deployments").
                failover = quota.alternatives(ctx) and self._retries.may_retry(attempt)
                passed = Passed(CLIENT_CLOSED, 0, spent=True)  # cancelled: it may have been spent
                try:
                    with self._retries.attempting(attempt):
                        passed = await self._pass_on(ctx, send, failover)
                finally:
                    if passed.spent:
                        await quota.settle(ticket, None)
                    else:
                        quota.release(ticket)
                    if passed.provider == 429:
                        quota.upstream_exhausted(ticket.model, None, ticket.lane or ticket.deployment)
                    elif passed.provider >= 500 or (passed.provider == 0 and passed.moved):
                        quota.upstream_failed(ticket.model, ticket.lane or ticket.deployment)
                if not passed.moved:
                    return passed.sent
                attempt += 1
        finally:
            self._retries.finished()

    async def _forward(self, ctx: CallContext, send: Send) -> int:
        """Calls the gateway does not generate through (countTokens, listings, other
        actions): forwarded as they are, answered as they come."""
        return (await self._pass_on(ctx, send)).sent

    async def _pass_on(self, ctx: CallContext, send: Send, failover: bool = False) -> Passed:
        """Forward the call and pass the answer on; with ``failover``, a 429, a 5xx or no
        answer is not passed on (``moved``: nothing was sent)."""
        outgoing = OutgoingCall(
            ctx.method, ctx.call, ctx.raw_path, ctx.query, ctx.headers, ctx.body, ctx.deployment, ctx.priority
        )
        own = self._upstream.own_credentials(ctx.call, ctx.deployment)
        headers_sent = False
        try:
            async with self._upstream.send(outgoing) as response:
                self._callers.upstream_answered(ctx, response.status)
                out_headers = [*self._upstream.answer_headers(response, outgoing, own), *ctx.response_headers]
                if response.status >= 400:
                    body = await response.read()
                    spent = provider_counted(response.status, body)
                    if failover and (response.status == 429 or response.status >= 500):
                        return Passed(0, response.status, spent, moved=True)
                    sent = await send_upstream_error(
                        send, ctx, response.status, body, out_headers, own_credentials=own
                    )
                    return Passed(sent, response.status, spent)
                if response.status == 200 and response.header(b"content-length") is None:
                    # An answer of unknown length may be long: pass it on as it arrives.
                    start = {"type": "http.response.start", "status": 200, "headers": out_headers}
                    await send(start)
                    headers_sent = True
                    async for chunk in drain(response):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b""})
                else:
                    body = await response.read()
                    content_type = response.header(b"content-type") or b"application/json"
                    await respond(
                        send,
                        response.status,
                        body,
                        content_type,
                        [(k, v) for k, v in out_headers if k != b"content-type"],
                    )
                return Passed(response.status, response.status, spent=True)
        except UpstreamFailure as failure:  # counted and logged by UpstreamClient.send
            if headers_sent:
                # Too late for an error status: cut the connection so the client sees an
                # incomplete answer instead of a stream that looks finished.
                raise
            if failover:
                return Passed(0, 0, spent=failure.status != 503, moved=True)
            sent = await send_refusal(send, ctx, CallRefused(failure.status, failure.message))
            return Passed(sent, 0, spent=failure.status != 503)  # 503: it never left
