"""Sending answers: refusals in Google's shape, cached answers in the framing asked for."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson

from knowctl.daemon.access_log import call_id
from knowctl.daemon.context import CallContext
from knowctl.daemon.contracts import Cached, CallRefused
from knowctl.daemon.pipeline import surfaces
from knowctl.errors import retry_after_header, retry_info
from knowctl.net.asgi import JSON, Send, respond, respond_error
from knowctl.policy.paths import ApiCall, Surface
from knowctl.policy.upstream_errors import tenant_error
from knowctl.policy.wire import openai

log = logging.getLogger("knowctl.upstream")
# How much of a provider's error answer the operator's log line keeps.
LOGGED_ERROR_BYTES = 2048

CACHE_HEADER = b"x-knowctl-cache"


async def send_refusal(send: Send, ctx: CallContext | None, refusal: CallRefused) -> int:
    headers = list(refusal.headers)
    if ctx is not None:
        headers.extend(ctx.response_headers)
    details = None
    if refusal.retry_after is not None:
        # Both forms, so every client's retry logic finds the delay where it looks for it.
        headers.append((b"retry-after", retry_after_header(refusal.retry_after).encode()))
        details = [retry_info(refusal.retry_after)]
    if ctx is not None and ctx.call.surface is Surface.OPENAI:
        await respond(send, refusal.status, openai.error_body(refusal.status, refusal.message), JSON, headers)
    else:
        await respond_error(send, refusal.status, refusal.message, details=details, extra_headers=headers)
    return refusal.status


async def send_error(
    send: Send, call: ApiCall, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> int:
    """An error of the gateway's own in the shape of the call's route (OpenAI's on its
    endpoint, Google's everywhere else)."""
    if call.surface is Surface.OPENAI:
        await respond(send, status, openai.error_body(status, message), JSON, list(headers))
    else:
        await respond_error(send, status, message, extra_headers=list(headers))
    return status


async def send_cached(send: Send, ctx: CallContext, cached: Cached, label: str | None = None) -> int:
    """Replay a stored answer in the framing this caller asked for."""
    body, content_type = surfaces.render(ctx, cached.answer.chunks)
    label = label or _label(cached.layer)
    ctx.notes.cache = label
    headers = [
        *ctx.response_headers,
        (CACHE_HEADER, label.encode()),
        (b"age", str(int(cached.age_s)).encode()),
    ]
    await respond(send, 200, body, content_type, headers)
    return 200


def _message(google_error: bytes) -> str:
    try:
        found = orjson.loads(google_error)
        message = found["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "The provider refused the call."
    return message if isinstance(message, str) else "The provider refused the call."


def _label(layer: str) -> str:
    return layer if layer == "STALE" else f"HIT-{layer}"


async def send_upstream_error(
    send: Send,
    ctx: CallContext,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    own_credentials: bool,
) -> int:
    """Pass on the provider's error answer. When the gateway called with its own credentials
    the tenant gets it without the account's facts (knowctl.policy.upstream_errors) and the
    operator's log keeps the original under the request id the answer names. Returns the
    status sent."""
    content_type = next((v for k, v in headers if k == b"content-type"), JSON)
    rest = [(k, v) for k, v in headers if k != b"content-type"]
    if not own_credentials:
        await respond(send, status, body, content_type, rest)
        return status
    rid = call_id(ctx.notes, ctx.scope["headers"])
    log.warning(
        "provider answered %d for %s (request id %s): %s",
        status,
        ctx.call.model or ctx.raw_path,
        rid,
        body[:LOGGED_ERROR_BYTES].decode("utf-8", "replace"),
    )
    sent, shaped = tenant_error(status, body, rid)
    if ctx.call.surface is Surface.OPENAI:
        shaped = openai.error_body(sent, _message(shaped))
    await respond(send, sent, shaped, JSON, [*rest, (b"x-request-id", rid.encode())])
    return sent
