"""The one long-lived upstream client: where a call goes, with which headers.

The HTTP itself is knowctl.net.http1 (pooled keep-alive HTTP/1.1 on httptools): httpx's
pool serialises on its locks and aiohttp and pyreqwest cost
clearly more CPU per call (figures: docs/architecture.md, measured choices; bench/libraries.py).
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from knowctl.daemon import metrics
from knowctl.daemon.upstream.credentials import UpstreamCredentials
from knowctl.net import http1
from knowctl.policy import tiers
from knowctl.policy.callers import STRIPPED_HEADERS, without_credentials
from knowctl.policy.paths import ApiCall, Family
from knowctl.policy.pool import Deployment, Pool
from knowctl.policy.priority import Priority
from knowctl.redact import redact_url

if TYPE_CHECKING:
    from knowctl.daemon.context import CallContext

log = logging.getLogger("knowctl.upstream")

# Never forwarded upstream: hop-by-hop headers (RFC 9110 7.6.1), headers the client library
# computes itself, and knowctl's own control headers.
_DROP_REQUEST = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "accept-encoding",
        "expect",
    }
)
# With the gateway's own credentials: also every caller credential, cookie and billing choice.
_DROP_OWN = _DROP_REQUEST | STRIPPED_HEADERS
# Never passed back to the caller: hop-by-hop headers and framing that our server redoes.
_DROP_RESPONSE = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"content-length",
        b"content-encoding",
        b"date",
        b"server",
        b"upgrade",
        b"trailer",
        b"alt-svc",
    }
)


# The resumable-upload protocol's headers, which clients need whoever paid.
_UPLOAD = b"x-goog-upload-"


class UpstreamFailure(Exception):
    """The upstream could not be reached or did not answer in time."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def outcome(self) -> str:
        """The metrics label of this failure."""
        return {503: "unreachable", 504: "timeout"}.get(self.status, "broken")


@dataclass(frozen=True, slots=True)
class OutgoingCall:
    """Everything needed to send one call upstream."""

    method: str
    call: ApiCall
    raw_path: str  # as the client sent it, still percent-encoded
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    deployment: str | None = None  # the pool's deployment that admitted it; None: the first that serves it
    priority: Priority | None = None  # the caller's: the deployment's service tier for it, if mapped
    # A body passed on as it arrives instead of ``body`` (an upload's chunk): its length and pieces.
    stream: tuple[int, AsyncIterator[bytes]] | None = None


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """What the upstream client needs of the settings (knowctl.daemon.config.upstream_config)."""

    max_connections: int
    connect_timeout: float
    timeout: float


class UpstreamClient:
    """Sends calls to the pool's deployments (knowctl.policy.pool), each with its own
    credentials (``credentials``, by deployment name), over one connection pool."""

    def __init__(
        self, config: UpstreamConfig, pool: Pool, credentials: Mapping[str, UpstreamCredentials]
    ) -> None:
        self._pool_of = pool
        self._credentials = credentials
        self._config = config
        self._pool: http1.Pool | None = None
        self._origins: dict[tuple[str, str | None], tuple[http1.Origin, str]] = {}
        # HTTPS_PROXY, HTTP_PROXY and NO_PROXY (either case), read once, as curl reads them.
        self._env_proxies = urllib.request.getproxies_environment()

    @property
    def target(self) -> str:
        """Where calls go, for people (banner, /api/ready): never with a password."""
        if self._pool_of.single:
            base = self._pool_of.deployments[0].base_url
            return redact_url(base) if base else "google"
        return "pool: " + ", ".join(d.name for d in self._pool_of.deployments)

    @property
    def credentials_mode(self) -> str:
        """What the gateway authenticates with upstream, for people (never the secret)."""
        modes = {d.name: self._credentials[d.name].mode for d in self._pool_of.deployments}
        if self._pool_of.single:
            return next(iter(modes.values()))
        return ", ".join(f"{name}: {mode}" for name, mode in modes.items())

    @property
    def holds_credentials(self) -> bool:
        """Whether the gateway calls Google with credentials of its own (at any deployment)."""
        return any(c.holds_credentials for c in self._credentials.values())

    @property
    def pooled(self) -> bool:
        """Deployments are configured (not the pool of one): answers name the one that served."""
        return not self._pool_of.single

    def describe(self) -> list[dict[str, Any]]:
        """Each deployment as configured, for people and scripts: where it is (never with a
        password), how the gateway authenticates there (never the secret), what it serves."""
        out = []
        for d in self._pool_of.deployments:
            out.append(
                {
                    "name": d.name,
                    "family": d.family.value if d.family is not None else "any",
                    "target": redact_url(d.base_url) if d.base_url else "google",
                    "project": d.project,
                    "location": d.location,
                    "credentials": self._credentials[d.name].mode,
                    "serves": sorted(d.models) if d.models is not None else "*",
                    "renames": {m: s.upstream for m, s in (d.models or {}).items() if s.upstream != m},
                }
            )
        return out

    def serves(self, call: ApiCall) -> bool:
        """Whether some deployment of the pool serves ``call`` (its family and model)."""
        return self._pool_of.first(call) is not None

    def _deployment(self, call: ApiCall, name: str | None) -> Deployment:
        found = self._pool_of.get(name) if name is not None else self._pool_of.first(call)
        if found is None:
            raise UpstreamFailure(404, f"no upstream deployment serves {call.model or 'this call'}")
        return found

    def deployment_name(self, call: ApiCall, deployment: str | None = None) -> str:
        """The deployment ``send`` takes ``call`` to (``deployment``, else the first that serves it)."""
        return self._deployment(call, deployment).name

    def path_at(self, url: str, call: ApiCall, deployment: str | None) -> str | None:
        """``url`` (an absolute URL an answer named, such as an upload's) as a path and query
        on the deployment, or None when it points anywhere else: the gateway sends nothing
        to a host an answer made up."""
        found = self._deployment(call, deployment)
        base = found.origin(call).rstrip("/")
        if not url.startswith(base + "/"):
            return None
        return url[len(base) :]

    @asynccontextmanager
    async def open_live(
        self, call: ApiCall, raw_path: str, query: str, headers: list[tuple[str, str]], max_size: int
    ) -> AsyncIterator[ClientConnection]:
        """A Live API WebSocket to the deployment that serves ``call`` (the scheme of its base
        URL made ws/wss), with its credentials, or the caller's where it forwards them.
        Raises UpstreamFailure when it cannot be opened (the status Google answered, 503
        unreachable, 504 too slow)."""
        deployment = self._deployment(call, None)
        own = await self._credentials[deployment.name].headers_for(deployment.as_sent(call))
        sent = {k: v for k, v in _request_headers(headers, own).items() if k not in _WS_HANDSHAKE}
        base = deployment.origin(call).rstrip("/")
        scheme, _, rest = base.partition("://")
        query = _strip_key_param(query) if own is not None else query
        uri = f"{'wss' if scheme == 'https' else 'ws'}://{rest}{raw_path}" + (f"?{query}" if query else "")
        try:
            connection = await ws_connect(
                uri,
                additional_headers=sent,
                max_size=max_size,
                open_timeout=self._config.connect_timeout,
                compression=None,
                user_agent_header=None,
            )
        except InvalidStatus as exc:
            raise UpstreamFailure(
                exc.response.status_code, f"the upstream refused the session: {exc}"
            ) from exc
        except TimeoutError as exc:
            raise UpstreamFailure(504, "the upstream did not open the session in time") from exc
        except (OSError, InvalidHandshake) as exc:
            raise UpstreamFailure(503, f"the upstream's Live API is unreachable: {exc}") from exc
        try:
            yield connection
        finally:
            await connection.close()

    def own_credentials(self, call: ApiCall, deployment: str | None = None) -> bool:
        """Whether ``call`` goes upstream with the gateway's credentials (as ``send`` does at
        ``deployment``): then what comes back is about the gateway's account, not the caller's."""
        found = self._pool_of.get(deployment) if deployment is not None else self._pool_of.first(call)
        return found is not None and self._credentials[found.name].own_for(found.as_sent(call))

    async def start(self) -> None:
        self._pool = http1.Pool(
            max_connections=self._config.max_connections,
            connect_timeout=self._config.connect_timeout,
            timeout=self._config.timeout,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _origin(self, base: str, proxy: str | None) -> tuple[http1.Origin, str]:
        """The origin of ``base`` (reached through ``proxy``, the deployment's, or the
        environment's unless NO_PROXY names the host) and its path prefix (an upstream may
        sit under a path)."""
        found = self._origins.get((base, proxy))
        if found is None:
            origin, path = http1.Origin.split(base)
            via = proxy or self._env_proxies.get(origin.scheme)
            if proxy is None and via and urllib.request.proxy_bypass(origin.host):
                via = None
            if via:
                origin = origin.via(http1.Origin.parse(via))
            found = self._origins[(base, proxy)] = (origin, path.rstrip("/"))
        return found

    @asynccontextmanager
    async def send(self, outgoing: OutgoingCall, *, counted: bool = True) -> AsyncIterator[http1.Response]:
        """Open the upstream call; the body is read by the caller inside the block. A call is
        ``counted`` in the upstream metrics (time to its head, status or failure) and a
        failure, wherever it happens in the block, is logged; the gateway's own countTokens
        estimates are not."""
        assert self._pool is not None, "UpstreamClient.start() was not awaited"
        model = outgoing.call.model or "-"
        started = time.perf_counter()
        deployment = self._deployment(outgoing.call, outgoing.deployment)
        # A call that crosses families is authenticated and addressed as the deployment's own.
        own = await self._credentials[deployment.name].headers_for(deployment.as_sent(outgoing.call))
        headers = _request_headers(outgoing.headers, own)
        body, tier = self._bridged_body(deployment, outgoing), self._tier(deployment, outgoing)
        if tier is not None:
            tiered = tiers.with_tier(
                deployment.as_sent(outgoing.call).family, outgoing.call.surface, body, headers, tier
            )
            if tiered is None:
                tier = None  # the caller chose its tier itself
            else:
                body, extra = tiered
                headers.update(extra)
                metrics.UPSTREAM_TIERS_BY(deployment.name, tier).inc()
        query = _strip_key_param(outgoing.query) if own is not None else outgoing.query
        origin, prefix = self._origin(deployment.origin(outgoing.call), deployment.proxy)
        path = (
            outgoing.raw_path
            if deployment.legacy
            else deployment.target_path(outgoing.call, outgoing.raw_path)
        )
        target = prefix + path + (f"?{query}" if query else "")
        exchange = (
            self._pool.request(outgoing.method, origin, target, headers, body)
            if outgoing.stream is None
            else self._pool.request_streamed(outgoing.method, origin, target, headers, *outgoing.stream)
        )
        try:
            async with exchange as response:
                if tier is not None and tiers.downgraded(tier, response.header(tiers.SERVED_HEADER)):
                    metrics.UPSTREAM_TIER_DOWNGRADES_BY(deployment.name, metrics.MODELS(model)).inc()
                if counted:
                    if response.status < 300:  # the provider knows it: a real model's name
                        metrics.MODELS.learn(model)
                    label = metrics.MODELS(model)
                    metrics.UPSTREAM_DURATION_BY(label).observe(time.perf_counter() - started)
                    metrics.UPSTREAM_REQUESTS_BY(label, str(response.status)).inc()
                yield response
        except http1.HttpError as exc:
            failure = _failure(exc, origin)
            if counted:
                _count_failure(model, failure)
            raise failure from exc
        except UpstreamFailure as failure:  # raised in the block: a stream broke, an answer is not JSON
            if counted:
                _count_failure(model, failure)
            raise

    @staticmethod
    def _bridged_body(deployment: Deployment, outgoing: OutgoingCall) -> bytes:
        """The body, as the deployment's family takes it when the call crosses families."""
        if not deployment.bridged(outgoing.call):
            return outgoing.body
        try:
            payload = orjson.loads(outgoing.body) if outgoing.body else None
        except orjson.JSONDecodeError:
            return outgoing.body
        bridged = deployment.bridge_body(outgoing.call, payload if isinstance(payload, dict) else None)
        return outgoing.body if bridged is None else orjson.dumps(bridged)

    @staticmethod
    def _tier(deployment: Deployment, outgoing: OutgoingCall) -> str | None:
        """The service tier the deployment maps the call's priority to (generation only)."""
        if not deployment.tiers or outgoing.priority is None or not outgoing.call.generates:
            return None
        return deployment.tiers.get(outgoing.priority)

    def answer_headers(
        self, response: http1.Response, outgoing: OutgoingCall, own_credentials: bool
    ) -> list[tuple[bytes, bytes]]:
        """The upstream's headers passed back (``response_headers``), and with deployments
        configured the one that answered (``X-Knowctl-Upstream``)."""
        headers = response_headers(response, own_credentials)
        if self.pooled:
            found = (
                self._pool_of.get(outgoing.deployment)
                if outgoing.deployment
                else self._pool_of.first(outgoing.call)
            )
            if found is not None:
                headers.append((UPSTREAM_HEADER, found.name.encode()))
        return headers

    async def count_tokens(self, ctx: CallContext) -> int:
        """Exact input tokens of a generation call, from the provider's countTokens."""
        call = ctx.call
        payload = ctx.payload or {}
        if call.family is Family.GEMINI:
            body: dict[str, Any] = {"generateContentRequest": {"model": f"models/{call.model}", **payload}}
        else:
            body = {k: payload[k] for k in ("contents", "systemInstruction", "tools") if k in payload}
        action = ":" + (call.action or "")
        outgoing = OutgoingCall(
            method="POST",
            call=call,
            raw_path=ctx.raw_path.replace(action, ":countTokens").replace(quote(action), ":countTokens"),
            query="",
            headers=[(k, v) for k, v in ctx.headers if k != "content-type"]
            + [("content-type", "application/json")],
            body=orjson.dumps(body),
        )
        async with self.send(outgoing, counted=False) as response:
            data = await response.read()
            if response.status != 200:
                raise UpstreamFailure(502, f"countTokens answered {response.status}")
        total = orjson.loads(data).get("totalTokens")
        if not isinstance(total, int):
            raise UpstreamFailure(502, "countTokens answer has no totalTokens")
        return total


def _failure(exc: http1.HttpError, origin: http1.Origin) -> UpstreamFailure:
    if isinstance(exc, http1.ConnectFailed):
        return UpstreamFailure(503, f"upstream {origin.host}:{origin.port} is unreachable")
    if isinstance(exc, http1.Timeout):
        return UpstreamFailure(504, "upstream did not answer in time")
    return UpstreamFailure(502, f"upstream failed: {exc}")


def _count_failure(model: str, failure: UpstreamFailure) -> None:
    metrics.UPSTREAM_REQUESTS_BY(metrics.MODELS(model), failure.outcome).inc()
    log.warning("upstream call for %s failed: %s", model, failure.message)


def _request_headers(
    incoming: list[tuple[str, str]], own_credentials: dict[str, str] | None
) -> dict[str, str]:
    drop = _DROP_OWN if own_credentials is not None else _DROP_REQUEST
    headers = {
        name: value for name, value in incoming if name not in drop and not name.startswith("x-knowctl-")
    }
    # Identity encoding: the gateway reads usage from answers and replays them from cache.
    headers["accept-encoding"] = "identity"
    if own_credentials:
        headers.update(own_credentials)
    return headers


UPSTREAM_HEADER = b"x-knowctl-upstream"
# The client's WebSocket handshake is its own with the gateway: the upstream gets a new one.
_WS_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
        "origin",
        "user-agent",
    }
)


def response_headers(response: http1.Response, own_credentials: bool = False) -> list[tuple[bytes, bytes]]:
    """The headers passed back; Google's own ``x-goog-*`` ones only to callers who used their
    own credentials (they may name the account the call was billed to)."""
    if own_credentials:
        return [
            (name, value)
            for name, value in response.headers
            if name not in _DROP_RESPONSE and (not name.startswith(b"x-goog-") or name.startswith(_UPLOAD))
        ]
    return [(name, value) for name, value in response.headers if name not in _DROP_RESPONSE]


def _strip_key_param(query: str) -> str:
    """Drop every credential the caller put in the query (``key``, ``access_token``... in
    any spelling Google reads) when the gateway authenticates with its own credentials."""
    return without_credentials((), query)[1] if query else query


async def drain(response: http1.Response) -> AsyncIterator[bytes]:
    """The answer's body as it arrives, chunk by chunk, never buffered whole."""
    try:
        async for chunk in response.chunks():
            yield chunk
    except http1.HttpError as exc:
        raise UpstreamFailure(502, f"upstream stream broke: {type(exc).__name__}") from exc
