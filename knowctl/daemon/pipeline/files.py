"""The Gemini API's Files through the gateway: resumable uploads (docs/architecture.md,
"Resources per caller"; reading, listing and deleting files is ``owned.py``'s).

- A resumable upload's start goes upstream; its answer's ``X-Goog-Upload-URL`` (an absolute
  URL on Google's host) is recorded in the store under a new id and rewritten to the
  gateway, so any daemon takes the next chunk, and only the caller who started it.
- Each chunk streams through as it arrives (``OutgoingCall.stream``): an upload of any size
  keeps the daemon's memory flat, and the body limit applies per chunk. The final chunk's
  answer names the file: recorded with its owner and the deployment that holds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, urlencode

from knowctl.daemon.context import CallContext
from knowctl.daemon.contracts import CallRefused, Resources, Upload
from knowctl.daemon.pipeline.interactions import owner_of
from knowctl.daemon.pipeline.owned import OwnedCalls, answer
from knowctl.daemon.pipeline.replies import send_refusal
from knowctl.daemon.upstream.client import OutgoingCall, UpstreamClient, UpstreamFailure, response_headers
from knowctl.net.asgi import (
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Send,
    body_pieces,
    read_body,
    respond_error,
)
from knowctl.policy.paths import FILE_UPLOAD

# HTTP status 499 (client closed request) for the metrics only.
CLIENT_CLOSED = 499
UPLOAD_STATUS = b"x-goog-upload-status"
_UPLOAD_URLS = (b"x-goog-upload-url", b"x-goog-upload-control-url")
# Google's own upload tracking id: of the upload the gateway made, not the client's.
_UPSTREAM_UPLOAD_ID = b"x-guploader-uploadid"


@dataclass(frozen=True, slots=True)
class FilesConfig:
    """What the files flow needs of the settings (knowctl.daemon.config.handler_config)."""

    max_chunk_bytes: int  # the body limit, per chunk of an upload


class FileCalls:
    def __init__(
        self, config: FilesConfig, resources: Resources, upstream: UpstreamClient, owned: OwnedCalls
    ) -> None:
        self._config = config
        self._resources = resources
        self._upstream = upstream
        self._owned = owned

    async def __call__(self, ctx: CallContext, receive: Receive, send: Send) -> int:
        if ctx.call.action == FILE_UPLOAD:
            upload_id = dict(parse_qsl(ctx.query)).get("upload_id")
            if upload_id is not None:
                return await self._chunk(ctx, upload_id, receive, send)
            return await self._start(ctx, receive, send)
        return await self._owned.access(ctx, send)

    # --- uploads ----------------------------------------------------------------------------------
    async def _start(self, ctx: CallContext, receive: Receive, send: Send) -> int:
        if ctx.header.get("x-goog-upload-command", "").strip().lower() != "start":
            return await _upload_error(
                send, 400, "Only resumable uploads (X-Goog-Upload-Protocol: resumable) pass the gateway."
            )
        try:
            ctx.body = await read_body(
                receive, self._config.max_chunk_bytes, ctx.header.get("content-length")
            )
        except BodyTooLarge:
            return await _upload_error(send, 413, "The upload's metadata is too large.")
        except ClientDisconnected:
            return CLIENT_CLOSED
        deployment = self._upstream.deployment_name(ctx.call)
        ctx.deployment = deployment
        outgoing = _outgoing(ctx, ctx.raw_path, ctx.query)
        own = self._upstream.own_credentials(ctx.call, deployment)
        try:
            async with self._upstream.send(outgoing) as response:
                body = await response.read()
                headers = [(k, v) for k, v in response_headers(response, own) if k != _UPSTREAM_UPLOAD_ID]
                named = response.header(_UPLOAD_URLS[0])
                public = None
                if named is not None:
                    target = self._upstream.path_at(named.decode("latin-1"), ctx.call, deployment)
                    if target is None:
                        raise UpstreamFailure(502, "The upstream named an upload URL on another host.")
                    upload_id = await self._resources.open_upload(Upload(owner_of(ctx), deployment, target))
                    public = _public_upload_url(ctx, upload_id).encode()
                rewritten = [
                    (name, value) if name not in _UPLOAD_URLS else (name, public or b"")
                    for name, value in headers
                    if name not in _UPLOAD_URLS or public is not None
                ]
        except UpstreamFailure as failure:
            return await send_refusal(send, ctx, CallRefused(failure.status, failure.message))
        return await answer(send, response.status, response.header(b"content-type"), body, rewritten)

    async def _chunk(self, ctx: CallContext, upload_id: str, receive: Receive, send: Send) -> int:
        # A chunk with a credential must be its starter's; one without holds the upload's id.
        upload = await self._resources.upload(upload_id, owner_of(ctx) if ctx.identity is not None else None)
        if upload is None:
            return await _upload_error(send, 404, "No upload in progress has this id.")
        declared = ctx.header.get("content-length", "")
        if not declared.isdigit():
            return await _upload_error(send, 411, "An upload chunk must say its Content-Length.")
        length = int(declared)
        if length > self._config.max_chunk_bytes:
            return await _upload_error(
                send,
                413,
                f"An upload chunk may hold at most {self._config.max_chunk_bytes} bytes: send smaller ones.",
            )
        wait = await self._resources.upload_allowance(upload.owner, length)
        if wait is not None:
            seconds = max(1, math.ceil(wait)) if math.isfinite(wait) else None
            return await _upload_error(
                send,
                429,
                "This caller's upload bytes for the last 24 hours are used up"
                + (f"; retry in {seconds} s." if seconds is not None else ": this chunk can never fit."),
                [(b"retry-after", str(seconds).encode())] if seconds is not None else [],
            )
        ctx.deployment = upload.deployment
        path, _, query = upload.target.partition("?")
        outgoing = replace(_outgoing(ctx, path, query), body=b"", stream=(length, body_pieces(receive)))
        own = self._upstream.own_credentials(ctx.call, upload.deployment)
        try:
            async with self._upstream.send(outgoing) as response:
                body = await response.read()
                headers = [
                    (k, v)
                    for k, v in response_headers(response, own)
                    if k not in _UPLOAD_URLS and k != _UPSTREAM_UPLOAD_ID
                ]
        except ClientDisconnected:
            return CLIENT_CLOSED  # what arrived went on; the client may query and resume
        except UpstreamFailure as failure:
            return await send_refusal(send, ctx, CallRefused(failure.status, failure.message))
        if response.status == 200 and response.header(UPLOAD_STATUS) == b"final":
            if self._owned.guarded(ctx):  # the file, its uploader's
                await self._owned.record(ctx, body, upload.owner)
            await self._resources.close_upload(upload_id)
        return await answer(send, response.status, response.header(b"content-type"), body, headers)


def _outgoing(ctx: CallContext, path: str, query: str) -> OutgoingCall:
    return OutgoingCall(
        ctx.method, ctx.call, path, query, ctx.headers, ctx.body, ctx.deployment, ctx.priority
    )


def _public_upload_url(ctx: CallContext, upload_id: str) -> str:
    """Where the client sends the upload's chunks: this gateway, as the client reached it."""
    scheme = ctx.scope.get("scheme", "http")
    host = ctx.header.get("host", "")
    if not host:
        server = ctx.scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    query = urlencode({"upload_id": upload_id, "upload_protocol": "resumable"})
    return f"{scheme}://{host}/upload/{ctx.call.version}/files?{query}"


async def _upload_error(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> int:
    # "final": the SDK stops at once instead of sending the next chunk or retrying this one.
    extra = [(UPLOAD_STATUS, b"final"), *(headers or [])]
    await respond_error(send, status, message, extra_headers=extra)
    return status
