"""The admin API: a small route table, its authentication, and JSON in and out.

Components (callers, quota, cache, topics) each contribute routes through
``admin_routes()``; this module owns what they share: the token check, body parsing, and
errors in Google's shape.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson

from knowctl.net.asgi import (
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    read_body,
    respond_error,
    respond_json,
)

ADMIN_BODY_LIMIT = 1024 * 1024
OPEN_ROUTES = frozenset({"/api/health", "/api/ready"})


class AdminError(Exception):
    """A refusal with an HTTP status and a message for the operator."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class AdminRequest:
    method: str
    path: str
    params: dict[str, str]  # from the route pattern
    query: dict[str, str]  # the last value of each query parameter
    body: Any  # parsed JSON, or None without a body
    scope: Scope

    def json_object(self) -> dict[str, Any]:
        if self.body is None:
            return {}
        if not isinstance(self.body, dict):
            raise AdminError(400, "the request body must be a JSON object")
        return self.body


@dataclass(slots=True)
class AdminResponse:
    body: Any
    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]
Route = tuple[str, str, Handler]  # method, pattern like "/api/keys/{key_id}", handler


def _compile(pattern: str) -> re.Pattern[str]:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
    return re.compile(f"^{regex}$")


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """What the admin API needs of the settings (built by knowctl.daemon.config.admin_config)."""

    token: str | None = field(default=None, repr=False)  # None: loopback only
    metrics_require_token: bool = False


class AdminApi:
    def __init__(self, config: AdminConfig) -> None:
        token = config.token
        self._token = token.encode() if token else None
        self._metrics_open = not config.metrics_require_token
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add_routes(self, routes: Iterable[Route]) -> None:
        for method, pattern, handler in routes:
            self._routes.append((method, _compile(pattern), handler))

    def authorize(self, scope: Scope) -> AdminError | None:
        """None if the caller may use the admin route; else why not (401 or 403)."""
        path: str = scope["path"]
        if path in OPEN_ROUTES or (path == "/api/metrics" and self._metrics_open):
            return None
        if self._token is None:
            client = scope.get("client")
            if is_loopback(client[0] if client else None):
                return None
            return AdminError(
                403, "the admin API answers only on loopback while no KNOWCTL_ADMIN_TOKEN is configured"
            )
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
        # Constant time, so response timing reveals nothing about the token.
        if not hmac.compare_digest(presented, self._token):
            return AdminError(401, "admin API: missing or wrong bearer token")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> int:
        refusal = self.authorize(scope)
        if refusal is not None:
            headers = [(b"www-authenticate", b'Bearer realm="knowctl"')] if refusal.status == 401 else []
            await respond_error(send, refusal.status, refusal.message, extra_headers=headers)
            return refusal.status
        method, path = scope["method"], scope["path"]
        allowed: list[str] = []
        for route_method, pattern, handler in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            return await self._run(handler, match.groupdict(), scope, receive, send)
        if allowed:
            await respond_error(
                send,
                405,
                f"Method {method} is not allowed on {path}; use {', '.join(sorted(set(allowed)))}.",
                extra_headers=[(b"allow", ", ".join(sorted(set(allowed))).encode())],
            )
            return 405
        await respond_error(send, 404, f"The requested path {path} was not found.")
        return 404

    async def _run(
        self, handler: Handler, params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> int:
        try:
            body = await self._body(scope, receive)
            query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}
            response = await handler(AdminRequest(scope["method"], scope["path"], params, query, body, scope))
        except AdminError as error:
            await respond_error(send, error.status, error.message)
            return error.status
        except ClientDisconnected:
            return 499
        await respond_json(send, response.status, response.body, response.headers)
        return response.status

    @staticmethod
    async def _body(scope: Scope, receive: Receive) -> Any:
        if scope["method"] in ("GET", "HEAD", "DELETE"):
            return None
        declared = next((v.decode() for k, v in scope["headers"] if k == b"content-length"), None)
        try:
            raw = await read_body(receive, ADMIN_BODY_LIMIT, declared)
        except BodyTooLarge:
            raise AdminError(413, f"admin request bodies are limited to {ADMIN_BODY_LIMIT} bytes") from None
        if not raw.strip():
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise AdminError(400, f"invalid JSON: {exc.msg} at position {exc.pos}") from None
