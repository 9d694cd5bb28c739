"""The Live API through the gateway: one WebSocket session relayed to Google's
(docs/architecture.md, "The Live API").

The caller is identified from the handshake as for HTTP (a key in the query or the headers).
The session is accepted, and its first message must be the setup, which names the model,
within ``setup_timeout_s``. Then:

1. the caller's limits count one request;
2. the provider quota admits one request against the model's windows (no wait: a session
   that cannot start now is told when to retry);
3. the upstream session is opened with the gateway's credentials.

Frames are relayed both ways as they come, one at a time: a side that stops reading holds
the other back (nothing is buffered beyond one message). The usage Google reports in its
messages is added up and settles the admission when the session ends.

Every refusal closes the socket with a code and a reason that says why:

| code | when |
|---|---|
| 1008 | who is calling, limits, too many sessions, no setup, too long |
| 1013 | quota: try again later |
| 1011 | the upstream failed |
| 1001 | the gateway is stopping |
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from knowctl.daemon import metrics
from knowctl.daemon.context import CallContext, Ticket
from knowctl.daemon.contracts import Callers, CallRefused, QuotaGate
from knowctl.daemon.upstream.client import UpstreamClient, UpstreamFailure
from knowctl.net.asgi import Receive, Send
from knowctl.policy.paths import live_model

log = logging.getLogger("knowctl.live")

POLICY = 1008  # refused: who, limits, sessions, setup, length
TRY_LATER = 1013  # the provider quota has no room now
UPSTREAM_FAILED = 1011
GOING_AWAY = 1001
NORMAL = 1000
# A close reason is at most 123 bytes (RFC 6455 5.5: a control frame's payload is 125).
MAX_REASON = 123


@dataclass(frozen=True, slots=True)
class LiveConfig:
    """What the Live flow needs of the settings (knowctl.daemon.config.handler_config)."""

    max_session_s: float
    max_sessions_per_user: int
    setup_timeout_s: float
    max_message_bytes: int


class Closed(Exception):
    """End the session with this close code and reason."""

    def __init__(self, code: int, reason: str, outcome: str = "refused") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.outcome = outcome


class LiveCalls:
    def __init__(
        self,
        config: LiveConfig,
        upstream: UpstreamClient,
        callers: Callers,
        quota: QuotaGate,
        check_limits: Callable[[CallContext], Awaitable[None]],
    ) -> None:
        self._config = config
        self._upstream = upstream
        self._callers = callers
        self._quota = quota
        self._check_limits = check_limits
        self._open: dict[str, int] = {}  # sessions open per caller
        self._draining = False
        self._sessions: set[asyncio.Task[Any]] = set()

    async def __call__(
        self, ctx: CallContext, receive: Receive, send: Send, refused: CallRefused | None
    ) -> int:
        """One session, from the handshake (already read) to its close; the close code."""
        await send({"type": "websocket.accept"})
        caller = ctx.identity.caller if ctx.identity is not None else None
        try:
            # The setup is read before any refusal: a client closed while it sends its setup
            # sees a broken socket, one closed after it reads the reason (the SDK raises it).
            setup = await self._setup(receive)
            if refused is not None:
                raise Closed(POLICY, refused.message)
            if self._draining:
                raise Closed(GOING_AWAY, "The gateway is stopping; connect again.", "draining")
            key = caller or ctx.client_ip
            if self._open.get(key, 0) >= self._config.max_sessions_per_user:
                raise Closed(
                    POLICY, f"At most {self._config.max_sessions_per_user} Live sessions at once per caller."
                )
            self._open[key] = self._open.get(key, 0) + 1
            metrics.LIVE_SESSIONS.inc()
            try:
                code = await self._session(ctx, receive, send, setup)
            finally:
                metrics.LIVE_SESSIONS.dec()
                left = self._open[key] - 1
                if left:
                    self._open[key] = left
                else:
                    del self._open[key]
            return code
        except Closed as closed:
            metrics.LIVE_SESSIONS_ENDED_BY(closed.outcome).inc()
            await _close(send, closed.code, closed.reason)
            return closed.code

    async def _session(
        self, ctx: CallContext, receive: Receive, send: Send, setup: tuple[bytes | str, dict[str, Any]]
    ) -> int:
        raw, parsed = setup
        named = parsed["setup"].get("model")
        found = live_model(ctx.call.family, named) if isinstance(named, str) else None
        if found is None:
            raise Closed(POLICY, "The setup must name a model.")
        model, project, location = found
        ctx.call = replace(ctx.call, model=model, project=project, location=location)
        ctx.payload = parsed["setup"]
        if not self._upstream.serves(ctx.call):
            raise Closed(POLICY, f"No upstream of this gateway serves {model}.")
        try:
            await self._check_limits(ctx)  # a session counts one request
            got = await self._quota.try_admit(ctx)
        except CallRefused as refusal:
            raise Closed(POLICY, refusal.message) from None
        if not isinstance(got, Ticket):
            raise Closed(TRY_LATER, f"Quota exceeded for {model}; retry in {max(1, round(got))} s.")
        usage: dict[str, int] = {}
        try:
            async with self._upstream.open_live(
                ctx.call, ctx.raw_path, ctx.query, ctx.headers, self._config.max_message_bytes
            ) as upstream:
                await upstream.send(raw)
                return await self._relay(receive, send, upstream, usage)
        except UpstreamFailure as failure:
            code = (
                TRY_LATER if failure.status == 429 else UPSTREAM_FAILED if failure.status >= 500 else POLICY
            )
            raise Closed(code, f"The upstream refused the session ({failure.status}).", "failed") from None
        finally:
            await self._quota.settle(got, _settled(usage))

    async def _relay(
        self, receive: Receive, send: Send, upstream: ClientConnection, usage: dict[str, int]
    ) -> int:
        """Both directions until one side closes (or the session's time is up); the code."""
        to_google = asyncio.create_task(self._from_client(receive, upstream))
        to_client = asyncio.create_task(self._from_google(upstream, send, usage))
        self._sessions.add(to_client)
        try:
            done, _ = await asyncio.wait(
                {to_google, to_client},
                timeout=self._config.max_session_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            self._sessions.discard(to_client)
            for task in (to_google, to_client):
                task.cancel()
            await asyncio.gather(to_google, to_client, return_exceptions=True)
        if not done:
            raise Closed(
                POLICY, f"The session reached its limit of {self._config.max_session_s:g} s.", "expired"
            )
        if to_google in done:  # the client went: the upstream closes with the block
            metrics.LIVE_SESSIONS_ENDED_BY("closed").inc()
            return (
                int(to_google.result())
                if not to_google.cancelled() and to_google.exception() is None
                else NORMAL
            )
        if to_client.exception() is not None:
            raise Closed(UPSTREAM_FAILED, "The upstream session broke.", "failed")
        code, reason = to_client.result()
        if self._draining and code == GOING_AWAY:
            raise Closed(GOING_AWAY, reason, "draining")
        metrics.LIVE_SESSIONS_ENDED_BY("closed").inc()
        await _close(send, code, reason)
        return code

    @staticmethod
    async def _from_client(receive: Receive, upstream: ClientConnection) -> int:
        frames, size = metrics.LIVE_FRAMES_BY("upstream"), metrics.LIVE_BYTES_BY("upstream")
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code", NORMAL))
            data = message.get("bytes")
            if data is None:
                data = message.get("text") or ""
            frames.inc()
            size.inc(len(data))
            await upstream.send(data)  # waits while Google is behind: back-pressure

    @staticmethod
    async def _from_google(upstream: ClientConnection, send: Send, usage: dict[str, int]) -> tuple[int, str]:
        frames, size = metrics.LIVE_FRAMES_BY("downstream"), metrics.LIVE_BYTES_BY("downstream")
        try:
            async for message in upstream:
                frames.inc()
                size.inc(len(message))
                if isinstance(message, bytes):
                    if b"usageMetadata" in message:
                        _add_usage(usage, message)
                    await send({"type": "websocket.send", "bytes": message})
                else:
                    if "usageMetadata" in message:
                        _add_usage(usage, message)
                    await send({"type": "websocket.send", "text": message})
        except ConnectionClosed as closed:
            if closed.rcvd is not None:
                return closed.rcvd.code, closed.rcvd.reason
            return UPSTREAM_FAILED, "The upstream session broke."
        rcvd = upstream.close_code
        return (rcvd or NORMAL), (upstream.close_reason or "")

    async def drain(self) -> None:
        """The gateway stops: no new session, and every open one is told to go away."""
        self._draining = True
        for task in list(self._sessions):
            task.cancel()

    async def _setup(self, receive: Receive) -> tuple[bytes | str, dict[str, Any]]:
        """The first message, which must be the setup: as it came, and parsed."""
        try:
            async with asyncio.timeout(self._config.setup_timeout_s):
                message = await receive()
        except TimeoutError:
            raise Closed(POLICY, f"No setup message within {self._config.setup_timeout_s:g} s.") from None
        if message["type"] == "websocket.disconnect":
            raise Closed(NORMAL, "", "closed")
        raw = message.get("bytes") or message.get("text") or b""
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Closed(POLICY, "The first message must be the setup, as JSON.") from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("setup"), dict):
            raise Closed(POLICY, 'The first message must be the setup: {"setup": {"model": ...}}.')
        return raw, parsed


async def _close(send: Send, code: int, reason: str) -> None:
    encoded = reason.encode()[:MAX_REASON].decode(errors="ignore")
    with contextlib.suppress(Exception):  # the client may be gone already
        await send({"type": "websocket.close", "code": code, "reason": encoded})


def _add_usage(usage: dict[str, int], message: bytes | str) -> None:
    """Add what one server message reports (``usageMetadata``: the turn's tokens)."""
    try:
        found = orjson.loads(message).get("usageMetadata")
    except (orjson.JSONDecodeError, AttributeError):
        return
    if not isinstance(found, dict):
        return
    for name in ("promptTokenCount", "responseTokenCount", "totalTokenCount", "thoughtsTokenCount"):
        value = found.get(name)
        if isinstance(value, int) and value >= 0:
            usage[name] = usage.get(name, 0) + value


def _settled(usage: dict[str, int]) -> dict[str, int] | None:
    """The session's usage as the quota reads a generation's (None: Google reported none,
    and the admission stands as reserved)."""
    if "promptTokenCount" not in usage:
        return None
    return {
        "promptTokenCount": usage["promptTokenCount"],
        "candidatesTokenCount": usage.get("responseTokenCount", 0),
        "thoughtsTokenCount": usage.get("thoughtsTokenCount", 0),
        "totalTokenCount": usage.get("totalTokenCount", 0),
    }
