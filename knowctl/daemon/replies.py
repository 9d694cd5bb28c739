"""Sending answers: refusals in Google's shape, cached answers in the framing asked for."""

from __future__ import annotations

from knowctl.daemon.asgi import JSON, Send, respond, respond_error
from knowctl.daemon.components import Cached, CallRefused
from knowctl.daemon.logging import SCOPE_CACHE
from knowctl.daemon.request import CallContext
from knowctl.errors import retry_after_header, retry_info
from knowctl.policy.framing import render_json_array, render_sse

SSE = b"text/event-stream"
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
    await respond_error(send, refusal.status, refusal.message, details=details, extra_headers=headers)
    return refusal.status


async def send_cached(send: Send, ctx: CallContext, cached: Cached, label: str | None = None) -> int:
    """Replay a stored answer in the framing this caller asked for."""
    chunks = cached.answer.chunks
    if not ctx.streaming:
        body, content_type = chunks[0], JSON
    elif ctx.sse:
        body, content_type = render_sse(chunks), SSE
    else:
        body, content_type = render_json_array(chunks), JSON
    label = label or _label(cached.layer)
    ctx.scope[SCOPE_CACHE] = label
    headers = [
        *ctx.response_headers,
        (CACHE_HEADER, label.encode()),
        (b"age", str(int(cached.age_s)).encode()),
    ]
    await respond(send, 200, body, content_type, headers)
    return 200


def _label(layer: str) -> str:
    return layer if layer == "STALE" else f"HIT-{layer}"
