"""The gateway as one ASGI callable: lifecycle, dispatch by path, metrics per request."""

from __future__ import annotations

import functools
import gc
import logging
import time
from enum import StrEnum
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from knowctl.daemon import config, metrics
from knowctl.daemon.access_log import access_log
from knowctl.daemon.admin import cache as cache_admin
from knowctl.daemon.admin import callers as callers_admin
from knowctl.daemon.admin import quota as quota_admin
from knowctl.daemon.admin import topics as topics_admin
from knowctl.daemon.admin import upstreams as upstreams_admin
from knowctl.daemon.admin.api import AdminApi, AdminError, is_loopback
from knowctl.daemon.cache.answers import AnswerCache
from knowctl.daemon.cache.items import EmbeddingItemCache
from knowctl.daemon.callers.registry import CallerRegistry
from knowctl.daemon.interactions.book import InteractionBook
from knowctl.daemon.pipeline.handler import CLIENT_CLOSED, ModelCallHandler
from knowctl.daemon.quota.provider import ProviderQuota
from knowctl.daemon.resources.book import ResourceBook
from knowctl.daemon.topics.service import TopicService
from knowctl.daemon.upstream.client import UpstreamClient
from knowctl.daemon.upstream.credentials import UpstreamCredentials
from knowctl.net.asgi import Receive, Scope, Send, respond, respond_error, respond_json, transport_status
from knowctl.policy.paths import KNOWN_ACTIONS, Surface, parse_live_path, parse_path
from knowctl.settings import Settings
from knowctl.store import Store, StoreUnavailable, open_store

# Container allocations between collections of the youngest generation (CPython's default:
# 700). A request allocates a few hundred, so the default collected every few requests.
GC_YOUNG_THRESHOLD = 10_000

log = logging.getLogger("knowctl.daemon")

# In --simulate mode the built-in simulator answers under this prefix on the daemon's own
# port, so the gateway reaches it over real loopback HTTP like any other upstream.
SIMULATOR_PREFIX = "/_simulator/upstream"
SIMULATOR_CONTROL = "/_simulator/"
OPS_ROUTES = frozenset({"/api/health", "/api/ready", "/api/metrics"})
READY_PING_INTERVAL_S = 1.0

# Clients call a handful of paths over and over; a parse is a few regex matches. ApiCall is
# frozen, so one parsed value can serve every request for its path; the bound keeps paths
# made up by clients from growing it.
_parse_path = functools.lru_cache(maxsize=1024)(parse_path)


class Component(Protocol):
    """What the gateway asks of each stateful part: a lifecycle (admin routes are wired apart)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


class Gateway:
    """Everything one daemon process holds, created at start-up and closed at shutdown."""

    def __init__(self, settings: Settings, simulator: Any | None = None) -> None:
        self.settings = settings
        self.phase = Phase.STARTING
        self.pool = config.upstream_pool(settings)
        credentials = {
            name: UpstreamCredentials.from_config(c)
            for name, c in config.credentials_configs(settings).items()
        }
        self.upstream = UpstreamClient(config.upstream_config(settings), self.pool, credentials)
        self.store: Store = open_store(settings.store_url, timeout=settings.store_timeout)
        self.callers = CallerRegistry(
            config.callers_config(settings, self.upstream.holds_credentials), self.store
        )
        self.cache = AnswerCache(config.cache_config(settings), self.store)
        self.quota = ProviderQuota(
            config.provider_config(settings, self.pool), self.store, count_tokens=self.upstream.count_tokens
        )
        self.interactions = InteractionBook(config.interactions_config(settings), self.store)
        self.resources = ResourceBook(config.resources_config(settings), self.store)
        self.model_calls = ModelCallHandler(
            config.handler_config(settings),
            self.upstream,
            callers=self.callers,
            cache=self.cache,
            quota=self.quota,
            interactions=self.interactions,
            items=EmbeddingItemCache(config.items_config(settings), self.store),
            resources=self.resources,
            only_known_actions=self.callers.mode == "keys",
        )
        # Route labels are the actions the gateway knows; a made-up one is "other".
        self._action_routes = {name: name for name in (*KNOWN_ACTIONS, *settings.allowed_action_names)}
        declared = (m for d in settings.upstreams for m in d.models or ())
        metrics.MODELS.allow((*settings.quota_models, *declared, settings.topics_model))
        self.topics = TopicService(
            config.topics_config(settings), self.store, self.cache, self.model_calls.generate_internal
        )
        self.admin = AdminApi(config.admin_config(settings))
        self.admin.add_routes(callers_admin.routes(self.callers))
        self.admin.add_routes(cache_admin.routes(self.cache))
        self.admin.add_routes(quota_admin.routes(self.quota))
        self.admin.add_routes(upstreams_admin.routes(self.quota, self.upstream))
        self.admin.add_routes(topics_admin.routes(self.topics))
        self._simulator = simulator  # an ASGI app, only with --simulate
        self._access_log = settings.access_log
        self._store_state: dict[str, Any] | None = None
        self._store_checked = 0.0

    def _components(self) -> tuple[Component, ...]:
        """In start-up order; shut down in reverse."""
        return (self.callers, self.cache, self.quota, self.interactions, self.resources, self.topics)

    async def startup(self) -> None:
        await self.upstream.start()
        for component in self._components():
            await component.start()
        try:
            await self.store.ping()
        except StoreUnavailable as exc:
            # Degraded, not fatal: the daemon serves with local state until the store returns.
            metrics.STORE_UP.set(0)
            log.warning("store %s unreachable at start-up: %s", self.store.describe(), exc)
        # What start-up built (modules, settings, pools) lives as long as the daemon: moved
        # out of the cyclic collector's sight, so its collections only walk request objects.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        self.phase = Phase.READY

    async def shutdown(self) -> None:
        self.phase = Phase.DRAINING
        await self.model_calls.live_calls.drain()
        for component in reversed(self._components()):
            await component.close()
        await self.upstream.close()
        await self.store.close()

    # --- ASGI ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("start-up failed: %s", str(exc) or repr(exc))
                    await self.shutdown()  # release what did start (connections, tasks)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        route, status = "not_found", 404
        try:
            if path in OPS_ROUTES:
                route = path[5:]
                status = await self._ops(route, scope, send)
            elif path.startswith("/api/"):
                route = "admin"
                status = await self.admin(scope, receive, send)
            elif path.startswith("/topics/"):
                route = "topics"
                status = await self.topics.handle(scope, receive, send)
            elif self._simulator is not None and path.startswith(SIMULATOR_CONTROL):
                route = "simulator"
                status = await self._to_simulator(scope, receive, send)
            else:
                call = _parse_path(path)
                if call is None:
                    await respond_error(send, 404, f"The requested path {path} was not found.")
                else:
                    action = call.action
                    if call.surface is not Surface.MODELS:
                        route = call.route
                    else:
                        route = self._action_routes.get(action, metrics.OTHER) if action else "list_models"
                    status = await self.model_calls(scope, receive, send, call)
        finally:
            elapsed = time.perf_counter() - started
            if status == CLIENT_CLOSED:  # or the transport refused the body itself (503, 408)
                status = transport_status(scope) or status
            metrics.HTTP_REQUESTS_BY(route, str(status)).inc()
            metrics.HTTP_DURATION_BY(route).observe(elapsed)
            if self._access_log:
                access_log(scope, route, status, elapsed)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The Live API (pipeline/live.py); any other WebSocket path is refused at the
        handshake (a 403: the HTTP answer to an upgrade that is not taken)."""
        started = time.perf_counter()
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        call = parse_live_path(scope["path"])
        if call is None or self.phase is not Phase.READY:
            await send({"type": "websocket.close", "code": 1008})
            code = 1008
        else:
            code = await self.model_calls.live(scope, receive, send, call)
        elapsed = time.perf_counter() - started
        metrics.HTTP_REQUESTS_BY("live", f"ws{code}").inc()
        if self._access_log:
            access_log({**scope, "method": "GET"}, "live", code, elapsed)  # the handshake's

    async def _ops(self, route: str, scope: Scope, send: Send) -> int:
        if scope["method"] not in ("GET", "HEAD"):
            await respond_error(send, 405, f"Method {scope['method']} is not allowed here.")
            return 405
        refusal = self.admin.authorize(scope)  # /api/metrics may be behind the token
        if refusal is not None:
            await respond_error(send, refusal.status, refusal.message)
            return refusal.status
        if route == "health":
            await respond_json(send, 200, {"status": "ok"})
            return 200
        if route == "ready":
            return await self._ready(send)
        await respond(send, 200, metrics.exposition(), CONTENT_TYPE_LATEST.encode())
        return 200

    async def _store_health(self) -> dict[str, Any]:
        """The store's state, pinged at most once per READY_PING_INTERVAL_S: probes from every
        load balancer and kubelet then cost no store round trip each, and stay fast under load."""
        now = time.monotonic()
        if self._store_state is not None and now - self._store_checked < READY_PING_INTERVAL_S:
            return self._store_state
        store: dict[str, Any] = {"backend": self.store.backend, "url": self.store.describe()}
        try:
            store["latency_ms"] = round(await self.store.ping() * 1000, 3)
            store["ok"] = True
            metrics.STORE_UP.set(1)
        except StoreUnavailable as exc:
            store.update(ok=False, error=str(exc))
            metrics.STORE_UP.set(0)
        self._store_state, self._store_checked = store, now
        return store

    async def _ready(self, send: Send) -> int:
        """200 whenever the daemon can serve; 503 only while starting or draining."""
        store = await self._store_health()
        status = 200 if self.phase is Phase.READY else 503
        body = {
            "status": self.phase.value,
            "degraded": not store["ok"],
            "dependencies": {
                "store": store,
                "upstream": {"target": self.upstream.target, "credentials": self.upstream.credentials_mode},
            },
        }
        await respond_json(send, status, body)
        return status

    async def _to_simulator(self, scope: Scope, receive: Receive, send: Send) -> int:
        assert self._simulator is not None
        path: str = scope["path"]
        # The simulator's upstream is for the gateway's own calls, which come from loopback;
        # its control routes (/_simulator/config: make it fail, slow it down) are admin
        # routes: behind the token, or loopback only without one.
        if path.startswith(SIMULATOR_PREFIX + "/"):
            client = scope.get("client")
            refusal = None if is_loopback(client[0] if client else None) else AdminError(403, "forbidden")
        else:
            refusal = self.admin.authorize(scope)
        if refusal is not None:
            await respond_error(send, refusal.status, refusal.message)
            return refusal.status
        if path.startswith(SIMULATOR_PREFIX + "/"):
            inner = path[len(SIMULATOR_PREFIX) :]
            raw = scope.get("raw_path") or path.encode()
            # root_path: the simulator's absolute URLs (an upload's) must name the prefix too.
            scope = {
                **scope,
                "path": inner,
                "raw_path": raw[len(SIMULATOR_PREFIX) :],
                "root_path": scope.get("root_path", "") + SIMULATOR_PREFIX,
            }
        status = 200

        async def recording_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self._simulator(scope, receive, recording_send)
        return status
