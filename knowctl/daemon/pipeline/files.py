"""The Gemini API's Files through the gateway (docs/architecture.md, "Resources per caller").

- A resumable upload's start goes upstream; its answer's ``X-Goog-Upload-URL`` (an absolute
  URL on Google's host) is recorded in the store under a new id and rewritten to the
  gateway, so any daemon takes the next chunk, and only the caller who started it.
- Each chunk streams through as it arrives (``OutgoingCall.stream``): an upload of any size
  keeps the daemon's memory flat, and the body limit applies per chunk. The final chunk's
  answer names the file: recorded with its owner and the deployment that holds it.
- Listing, reading, downloading and deleting: where the gateway calls Google with its own
  credentials, a caller sees and touches only the files it created (a list is filtered,
  another's name is a 404). With the caller's own credentials the files are its project's,
  and Google decides.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from knowctl.daemon.context import CallContext
from knowctl.daemon.contracts import CallRefused, Held, Resources, Upload
from knowctl.daemon.pipeline.interactions import owner_of
from knowctl.daemon.pipeline.replies import send_refusal
from knowctl.daemon.upstream.client import OutgoingCall, UpstreamClient, UpstreamFailure, response_headers
from knowctl.net.asgi import (
    BodyTooLarge,
    ClientDisconnected,
    Message,
    Receive,
    Send,
    body_pieces,
    read_body,
    respond,
    respond_error,
)
from knowctl.policy.files import named_files
from knowctl.policy.paths import FILE_DOWNLOAD, FILE_UPLOAD

# Forwards a call as it is and says what came of it (ModelCallHandler._pass_on).
PassOn = Callable[[CallContext, Send], Awaitable[Any]]

# HTTP status 499 (client closed request) for the metrics only.
CLIENT_CLOSED = 499
# Google keeps an uploaded file for 48 hours; its owner is remembered as long.
FILE_TTL_S = 48 * 3600.0
# What a listing answer may hold (a page of at most 100 files is far smaller).
MAX_LIST_BYTES = 8 * 1024 * 1024
UPLOAD_STATUS = b"x-goog-upload-status"
_UPLOAD_URLS = (b"x-goog-upload-url", b"x-goog-upload-control-url")
_FILE_NAME = re.compile(r"files/[a-z0-9][a-z0-9-]{0,39}")


@dataclass(frozen=True, slots=True)
class FilesConfig:
    """What the files flow needs of the settings (knowctl.daemon.config.handler_config)."""

    max_chunk_bytes: int  # the body limit, per chunk of an upload


def _gone(name: str) -> CallRefused:
    # Google's answer for a file that does not exist or is not yours: the same for both.
    return CallRefused(403, f"You do not have permission to access the File {name} or it may not exist.")


class FileCalls:
    def __init__(
        self, config: FilesConfig, resources: Resources, upstream: UpstreamClient, pass_on: PassOn
    ) -> None:
        self._config = config
        self._resources = resources
        self._upstream = upstream
        self._pass_on = pass_on

    async def __call__(self, ctx: CallContext, receive: Receive, send: Send) -> int:
        call = ctx.call
        if call.action == FILE_UPLOAD:
            upload_id = dict(parse_qsl(ctx.query)).get("upload_id")
            if upload_id is not None:
                return await self._chunk(ctx, upload_id, receive, send)
            return await self._start(ctx, receive, send)
        guarded = self._upstream.own_credentials(call)
        if call.resource is None:
            return await self._list(ctx, send, guarded)
        if guarded:
            held = await self._resources.find(call.resource, owner_of(ctx))
            if held is None:
                raise _gone(call.resource)
            ctx.deployment = held.deployment
        if call.action == FILE_DOWNLOAD or ctx.method == "GET":
            return int((await self._pass_on(ctx, send)).sent)
        status = 0

        async def watching(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        passed = await self._pass_on(ctx, watching)
        if status == 200:  # deleted
            await self._resources.forget(call.resource)
        return int(passed.sent)

    async def check_named(self, ctx: CallContext) -> None:
        """Refuse a call whose body names a file its caller does not own (where the gateway
        calls Google with its own credentials), before it goes upstream."""
        if not self._upstream.own_credentials(ctx.call, ctx.deployment):
            return
        names = sorted(named_files(ctx.payload))
        if not names:
            return
        owned = await self._resources.owned(names, owner_of(ctx))
        for name, mine in zip(names, owned, strict=True):
            if not mine:
                raise _gone(name)

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
                headers = response_headers(response, own)
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
        return await _answer(send, response.status, response.header(b"content-type"), body, rewritten)

    async def _chunk(self, ctx: CallContext, upload_id: str, receive: Receive, send: Send) -> int:
        owner = owner_of(ctx)
        upload = await self._resources.upload(upload_id, owner)
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
        ctx.deployment = upload.deployment
        path, _, query = upload.target.partition("?")
        outgoing = replace(_outgoing(ctx, path, query), body=b"", stream=(length, body_pieces(receive)))
        own = self._upstream.own_credentials(ctx.call, upload.deployment)
        try:
            async with self._upstream.send(outgoing) as response:
                body = await response.read()
                headers = [(k, v) for k, v in response_headers(response, own) if k not in _UPLOAD_URLS]
        except ClientDisconnected:
            return CLIENT_CLOSED  # what arrived went on; the client may query and resume
        except UpstreamFailure as failure:
            return await send_refusal(send, ctx, CallRefused(failure.status, failure.message))
        if response.status == 200 and response.header(UPLOAD_STATUS) == b"final":
            name = _file_name(body)
            if name is not None and self._upstream.own_credentials(ctx.call, upload.deployment):
                await self._resources.remember(name, Held(owner, upload.deployment), FILE_TTL_S)
            await self._resources.close_upload(upload_id)
        return await _answer(send, response.status, response.header(b"content-type"), body, headers)

    # --- listing ----------------------------------------------------------------------------------
    async def _list(self, ctx: CallContext, send: Send, guarded: bool) -> int:
        if not guarded:
            return int((await self._pass_on(ctx, send)).sent)
        outgoing = _outgoing(ctx, ctx.raw_path, ctx.query)
        try:
            async with self._upstream.send(outgoing) as response:
                body = await response.read()
                headers = response_headers(response, True)
        except UpstreamFailure as failure:
            return await send_refusal(send, ctx, CallRefused(failure.status, failure.message))
        if response.status == 200 and len(body) <= MAX_LIST_BYTES:
            body = await self._only_owned(body, owner_of(ctx))
        return await _answer(send, response.status, response.header(b"content-type"), body, headers)

    async def _only_owned(self, body: bytes, owner: str) -> bytes:
        """The listing with only ``owner``'s files (the page token stays: the next page is
        filtered alike)."""
        try:
            page = orjson.loads(body)
        except orjson.JSONDecodeError:
            return b"{}"  # nothing of anyone's leaks through an answer the gateway cannot read
        files = page.get("files") if isinstance(page, dict) else None
        if not isinstance(files, list):
            return (
                orjson.dumps({k: v for k, v in page.items() if k == "nextPageToken"})
                if isinstance(page, dict)
                else b"{}"
            )
        names = [f.get("name", "") if isinstance(f, dict) else "" for f in files]
        owned = await self._resources.owned([n for n in names if n], owner)
        mine = iter(owned)
        kept = [f for f, n in zip(files, names, strict=True) if n and next(mine)]
        out: dict[str, Any] = {}
        if kept:
            out["files"] = kept
        if isinstance(page.get("nextPageToken"), str):
            out["nextPageToken"] = page["nextPageToken"]
        return orjson.dumps(out)


async def _answer(
    send: Send, status: int, content_type: bytes | None, body: bytes, headers: list[tuple[bytes, bytes]]
) -> int:
    """The upstream's answer passed on with the headers the flow kept (its own framing)."""
    kept = [(k, v) for k, v in headers if k != b"content-type"]
    await respond(send, status, body, content_type or b"application/json", kept)
    return status


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


def _file_name(body: bytes) -> str | None:
    try:
        found = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    file = found.get("file") if isinstance(found, dict) else None
    name = file.get("name") if isinstance(file, dict) else None
    return name if isinstance(name, str) and _FILE_NAME.fullmatch(name) else None


async def _upload_error(send: Send, status: int, message: str) -> int:
    # "final": the SDK stops at once instead of sending the next chunk or retrying this one.
    await respond_error(send, status, message, extra_headers=[(UPLOAD_STATUS, b"final")])
    return status
