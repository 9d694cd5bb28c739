"""The model-call route: check the request, forward it, pass the answer back as it arrives."""

from __future__ import annotations

import logging
import time

import orjson

from knowctl.daemon import metrics
from knowctl.daemon.asgi import (
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    read_body,
    respond,
    respond_error,
)
from knowctl.daemon.upstream import OutgoingCall, UpstreamClient, UpstreamFailure, drain, response_headers
from knowctl.policy.paths import Action, ApiCall, allowed_methods
from knowctl.policy.requests import body_problem
from knowctl.settings import Settings

log = logging.getLogger("knowctl.proxy")

# HTTP status 499 (client closed request, as nginx logs it) for the metrics only.
CLIENT_CLOSED = 499


class ModelCallHandler:
    def __init__(self, settings: Settings, upstream: UpstreamClient) -> None:
        self._max_body = settings.max_body_bytes
        self._upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send, call: ApiCall) -> int:
        method: str = scope["method"]
        allowed = allowed_methods(call)
        if method not in allowed:
            await respond_error(
                send, 405, f"Method {method} is not allowed on {scope['path']}; use {', '.join(allowed)}.",
                extra_headers=[(b"allow", ", ".join(allowed).encode())],
            )
            return 405
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        body = b""
        if method == "POST":
            declared = next((v for k, v in headers if k == "content-length"), None)
            try:
                body = await read_body(receive, self._max_body, declared)
            except BodyTooLarge:
                await respond_error(
                    send, 413, f"Request body exceeds the limit of {self._max_body} bytes."
                )
                return 413
            except ClientDisconnected:
                return CLIENT_CLOSED
            problem = self._check_body(call, body)
            if problem is not None:
                await respond_error(send, 400, problem)
                return 400
        outgoing = OutgoingCall(
            method=method,
            call=call,
            raw_path=(scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
            query=scope["query_string"].decode("latin-1"),
            headers=headers,
            body=body,
        )
        return await self._forward(outgoing, send)

    @staticmethod
    def _check_body(call: ApiCall, body: bytes) -> str | None:
        if not body and call.known_action is None:
            return None  # other actions may legitimately have no body
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return f"Invalid JSON payload received. {exc.msg} at position {exc.pos}."
        return body_problem(call.known_action, parsed)

    async def _forward(self, outgoing: OutgoingCall, send: Send) -> int:
        model = outgoing.call.model or "-"
        started = time.perf_counter()
        headers_sent = False
        try:
            async with self._upstream.send(outgoing) as response:
                metrics.UPSTREAM_DURATION.labels(model).observe(time.perf_counter() - started)
                metrics.UPSTREAM_REQUESTS.labels(model, str(response.status)).inc()
                out_headers = response_headers(response)
                if outgoing.call.known_action is Action.STREAM:
                    # Pass each piece on as it arrives: clients show tokens while they stream.
                    start = {"type": "http.response.start", "status": response.status, "headers": out_headers}
                    await send(start)
                    headers_sent = True
                    async for chunk in drain(response):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b""})
                else:
                    body = await response.read()
                    content_type = response.headers.get("content-type", "application/json").encode("latin-1")
                    await respond(
                        send,
                        response.status,
                        body,
                        content_type,
                        [(k, v) for k, v in out_headers if k != b"content-type"],
                    )
                return response.status
        except UpstreamFailure as failure:
            metrics.UPSTREAM_REQUESTS.labels(model, _outcome(failure.status)).inc()
            log.warning("upstream call for %s failed: %s", model, failure.message)
            if headers_sent:
                # Too late for an error status: cut the connection so the client sees an
                # incomplete answer instead of a stream that looks finished.
                raise
            await respond_error(send, failure.status, failure.message)
            return failure.status


def _outcome(status: int) -> str:
    return {503: "unreachable", 504: "timeout"}.get(status, "broken")
