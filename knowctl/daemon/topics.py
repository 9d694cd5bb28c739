"""The topic API: ``GET /topics/{topic}``, generated content that browsers and CDNs can cache.

Each topic is one generateContent call built from the prompt template, run through the same
caller, cache, coalescing and quota path as a client's call (``generate_internal``). Topic
answers share one cache scope; the template is part of the prompt and so of the cache key,
so a changed template never serves the old text.

Popularity: each daemon counts requests per topic in memory and adds them to a tally in
the store every second (one bucket per sixth of ``topics_popular_window_s``). Once per
``topics_refresh_interval`` one daemon (a lease per interval) regenerates, at LOW priority,
the popular topics whose entry is older than ``topics_refresh_fraction`` of the TTL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from knowctl.daemon import cache_metrics as cm
from knowctl.daemon.admin import AdminError, AdminRequest, AdminResponse, Route
from knowctl.daemon.asgi import Receive, Scope, Send, respond, respond_error
from knowctl.daemon.cache import AnswerCache, topic_keys
from knowctl.daemon.cdn import CdnPurger
from knowctl.daemon.request import CallContext
from knowctl.policy import cachekey
from knowctl.policy.paths import ApiCall, Family
from knowctl.settings import Settings
from knowctl.store import Store, StoreUnavailable, keys

if TYPE_CHECKING:
    from knowctl.daemon.proxy import CapturedResponse

log = logging.getLogger("knowctl.topics")

PREFIX = "/topics/"
BUCKETS = 6  # the popularity window is counted in this many buckets
TALLY_READ = 1000  # topics read per bucket when ranking
MAX_LOCAL_TOPICS = 10_000  # counts kept while the store is away
MAX_PREWARM = 100
# Client headers the generation call may use: credentials and forwarding, nothing else
# (no cookies, no conditional headers, no client Cache-Control: a hard reload by one
# visitor must not regenerate content for everyone).
_FORWARD = frozenset(
    {"authorization", "x-goog-api-key", "x-goog-user-project", "x-forwarded-for", "x-real-ip", "forwarded"}
)
_PASS_BACK = frozenset({b"x-knowctl-cache", b"ratelimit", b"ratelimit-policy", b"retry-after"})

Generate = Callable[[CallContext], Awaitable["CapturedResponse"]]


def etag_of(body: bytes) -> bytes:
    return b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'


def etag_matches(if_none_match: str, etag: bytes) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2): W/ is ignored."""
    wanted = etag.decode()
    for item in if_none_match.split(","):
        tag = item.strip()
        if tag == "*" or tag.removeprefix("W/") == wanted:
            return True
    return False


def answer_text(body: bytes) -> tuple[str, str | None]:
    """(the text of the first candidate, modelVersion) of a GenerateContentResponse."""
    data = orjson.loads(body)
    parts = data["candidates"][0]["content"]["parts"]
    text = "".join(p.get("text", "") for p in parts if isinstance(p, dict))
    version = data.get("modelVersion")
    return text, version if isinstance(version, str) else None


class TopicService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        cache: AnswerCache,
        generate: Generate,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = store
        self._cache = cache
        self._generate = generate
        self._clock = clock
        env = SandboxedEnvironment(autoescape=False, undefined=StrictUndefined)
        try:
            self._template = env.from_string(settings.topics_prompt_template)
            self._template.render(topic="example")  # fail at start-up, not per request
        except TemplateError as exc:
            raise ValueError(f"topics_prompt_template cannot be used: {exc}") from exc
        self.cdn = CdnPurger(settings)
        cache.on_invalidate(self._purge_invalidated)
        self._counts: collections.Counter[str] = collections.Counter()
        self._bucket_s = settings.topics_popular_window_s / BUCKETS
        self._id = uuid.uuid4().hex.encode()
        self.refresh_slots: collections.deque[int] = collections.deque(maxlen=100)
        self.last_refresh: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._background(), name="topics-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(StoreUnavailable):
            await self._flush()
        await self.cdn.close()

    # --- GET /topics/{topic} -----------------------------------------------------------------
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> int:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await respond_error(
                send,
                405,
                f"Method {method} is not allowed on topics; use GET.",
                extra_headers=[(b"allow", b"GET, HEAD")],
            )
            return 405
        topic = scope["path"][len(PREFIX) :]
        try:
            cachekey.check_topic(topic)
        except ValueError as exc:
            await respond_error(send, 400, str(exc))
            return 400
        self._counts[topic] += 1
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        client = scope.get("client")
        ctx = self.context(topic, headers=headers, client=client)
        captured = await self._generate(ctx)
        status = captured.status or 502
        back = [(k, v) for k, v in captured.headers if k in _PASS_BACK]
        if status != 200:
            ctype = captured.header(b"content-type") or b"application/json"
            await respond(send, status, bytes(captured.body), ctype, [*back, (b"cache-control", b"no-store")])
            cm.TOPIC_REQUESTS.labels(str(status)).inc()
            return status
        try:
            text, version = answer_text(bytes(captured.body))
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            await respond_error(send, 502, "The model's answer for this topic could not be read.")
            return 502
        body = orjson.dumps(
            {"topic": topic, "model": self._settings.topics_model, "modelVersion": version, "text": text}
        )
        etag = etag_of(body)
        out = [*self._cache_headers(), (b"etag", etag), (b"vary", b"Accept-Encoding"), *back]
        if etag_matches(dict(headers).get("if-none-match", ""), etag):
            await send({"type": "http.response.start", "status": 304, "headers": out})
            await send({"type": "http.response.body", "body": b""})
            status = 304
        elif method == "HEAD":
            length = (b"content-length", str(len(body)).encode())
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json; charset=UTF-8"), length, *out],
                }
            )
            await send({"type": "http.response.body", "body": b""})
        else:
            await respond(send, 200, body, extra_headers=out)
        cm.TOPIC_REQUESTS.labels(str(status)).inc()
        return status

    def _cache_headers(self) -> list[tuple[bytes, bytes]]:
        s = self._settings
        if not s.topics_public:
            return [(b"cache-control", f"private, max-age={s.topics_browser_max_age}".encode())]
        cdn = f"max-age={s.topics_cdn_max_age}".encode()
        return [
            (b"cache-control", f"public, max-age={s.topics_browser_max_age}".encode()),
            (b"cdn-cache-control", cdn),
            (b"surrogate-control", cdn),
        ]

    # --- the generation call ---------------------------------------------------------------------
    def prompt(self, topic: str) -> str:
        return self._template.render(topic=topic)

    def context(
        self,
        topic: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        client: Any = None,
        internal: bool = False,
        refresh: bool = False,
    ) -> CallContext:
        """The generateContent call for ``topic``; ``internal`` marks the gateway's own calls
        (refresh, prewarm: scope["knowctl.internal"]), which run at LOW priority."""
        s = self._settings
        payload = {"contents": [{"role": "user", "parts": [{"text": self.prompt(topic)}]}]}
        model = s.topics_model
        if s.vertex_project:
            call = ApiCall(Family.VERTEX, "v1", model, "generateContent", s.vertex_project, s.vertex_location)
            where = f"projects/{s.vertex_project}/locations/{s.vertex_location}"
            path = f"/v1/{where}/publishers/google/models/{model}"
        else:
            call = ApiCall(Family.GEMINI, "v1beta", model, "generateContent")
            path = f"/v1beta/models/{model}"
        path += ":generateContent"
        out = [(k, v) for k, v in headers or () if k in _FORWARD]
        out += [("content-type", "application/json"), ("x-knowctl-topic", topic)]
        if internal:
            out.append(("x-knowctl-priority", "LOW"))
        if refresh:
            out.append(("cache-control", "no-cache"))  # read nothing: regenerate
        scope: dict[str, Any] = {
            "type": "http",
            "method": "POST",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out],
            "client": client or ("127.0.0.1", 0),
            "knowctl.topic": topic,
        }
        if internal:
            scope["knowctl.internal"] = "topics"
        return CallContext(
            scope=scope,
            call=call,
            method="POST",
            raw_path=path,
            query="",
            headers=out,
            header=dict(out),
            client_ip=scope["client"][0],
            body=orjson.dumps(payload),
            payload=payload,
        )

    async def regenerate(self, topic: str, *, force: bool) -> tuple[str, str | None]:
        """("fresh" | "generated" | "failed", why it failed). ``force`` skips the freshness check."""
        ctx = self.context(topic, internal=True, refresh=force)
        key = self._cache.key_for(ctx)
        if not force and key is not None and await self._cache.peek(key) is not None:
            return "fresh", None
        try:
            captured = await self._generate(ctx)
        except Exception as exc:  # a broken call must not stop a batch of topics
            log.warning("topics: generating %s failed: %s", topic, exc)
            return "failed", str(exc)
        if captured.status != 200:
            return "failed", _error_message(captured.status, bytes(captured.body))
        if key is not None:
            await self._cache.drop_everywhere([key], local=False)  # others re-read the new entry
        await self.cdn.purge_topics([topic])
        return "generated", None

    # --- popularity ------------------------------------------------------------------------------
    def _bucket(self, now: float) -> int:
        return int(now // self._bucket_s)

    async def _flush(self) -> None:
        counts, self._counts = self._counts, collections.Counter()
        if not counts:
            return
        ttl = self._settings.topics_popular_window_s + self._bucket_s
        try:
            await self._store.tally_add(keys.topic_tally(self._bucket(self._clock())), counts, ttl)
        except StoreUnavailable:
            if len(self._counts) + len(counts) <= MAX_LOCAL_TOPICS:
                self._counts.update(counts)  # try again next time
            raise

    async def popular(self) -> list[tuple[str, int]]:
        """Every counted topic with its requests in the window, most requested first."""
        with contextlib.suppress(StoreUnavailable):
            await self._flush()
        now = self._bucket(self._clock())
        total: collections.Counter[str] = collections.Counter()
        for bucket in range(now - BUCKETS + 1, now + 1):
            total.update(dict(await self._store.tally_top(keys.topic_tally(bucket), TALLY_READ)))
        total.update(self._counts)  # not yet flushed (the store was away)
        return sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))

    # --- background refresh ----------------------------------------------------------------------
    async def _background(self) -> None:
        interval = self._settings.topics_refresh_interval
        tick = min(1.0, interval / 4)
        last = int(self._clock() // interval)
        while True:
            await asyncio.sleep(tick)
            with contextlib.suppress(StoreUnavailable):
                await self._flush()
            slot = int(self._clock() // interval)
            if slot == last:
                continue
            last = slot
            try:
                await self.refresh_once(slot)
            except StoreUnavailable as exc:
                log.info("topics: refresh skipped, store unavailable: %s", exc)
            except Exception:
                log.exception("topics: refresh failed")

    async def refresh_once(self, slot: int) -> bool:
        """Refresh the popular topics for interval ``slot`` if no other daemon took it."""
        interval = self._settings.topics_refresh_interval
        if not await self._store.set_if_absent(keys.topic_refresh_lease(slot), self._id, 2 * interval):
            return False
        self.refresh_slots.append(slot)
        threshold = self._settings.topics_popular_threshold
        due_age = self._settings.topics_refresh_fraction * self._cache.l2_ttl
        done: dict[str, str] = {}
        for topic, count in await self.popular():
            if count < threshold:
                break
            key = self._cache.key_for(self.context(topic, internal=True))
            current = await self._cache.peek(key) if key is not None else None
            if current is not None and current.age_s < due_age:
                continue
            status, _ = await self.regenerate(topic, force=True)
            cm.TOPIC_REFRESHES.labels(status).inc()
            done[topic] = status
        self.last_refresh = {"slot": slot, "at": self._clock(), "topics": done}
        log.info("topics: refresh of interval %d: %s", slot, done or "nothing due")
        return True

    async def _purge_invalidated(self, cache_keys: list[str]) -> None:
        topics = topic_keys(cache_keys)
        if topics:
            await self.cdn.purge_topics(topics)

    # --- admin routes ----------------------------------------------------------------------------
    def admin_routes(self) -> list[Route]:
        return [
            ("GET", "/api/topics/popular", self._popular_route),
            ("POST", "/api/topics/prewarm", self._prewarm_route),
        ]

    async def _popular_route(self, request: AdminRequest) -> AdminResponse:
        s = self._settings
        try:
            ranked = await self.popular()
        except StoreUnavailable as exc:
            raise AdminError(503, f"the store is unavailable: {exc}") from None
        limit = request.query.get("limit", "100")
        top = ranked[: int(limit) if limit.isdigit() else 100]
        return AdminResponse(
            {
                "threshold": s.topics_popular_threshold,
                "window_s": s.topics_popular_window_s,
                "topics": [
                    {"topic": t, "requests": n, "popular": n >= s.topics_popular_threshold} for t, n in top
                ],
                "refresh": {
                    "interval_s": s.topics_refresh_interval,
                    "fraction": s.topics_refresh_fraction,
                    "slots": list(self.refresh_slots),
                    "last": self.last_refresh,
                },
            }
        )

    async def _prewarm_route(self, request: AdminRequest) -> AdminResponse:
        body = request.json_object()
        topics = body.get("topics")
        force = body.get("force", False)
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise AdminError(400, 'topics must be a list of topic names, e.g. {"topics": ["photosynthesis"]}')
        if len(topics) > MAX_PREWARM:
            raise AdminError(400, f"at most {MAX_PREWARM} topics per call")
        if not isinstance(force, bool):
            raise AdminError(400, "force must be true or false")
        results = []
        for topic in dict.fromkeys(topics):
            try:
                cachekey.check_topic(topic)
            except ValueError as exc:
                results.append({"topic": topic, "status": "failed", "error": str(exc)})
                continue
            status, error = await self.regenerate(topic, force=force)
            results.append({"topic": topic, "status": status, **({"error": error} if error else {})})
        summary = collections.Counter(r["status"] for r in results)
        return AdminResponse(
            {"results": results, "summary": {k: summary.get(k, 0) for k in ("generated", "fresh", "failed")}}
        )


def _error_message(status: int, body: bytes) -> str:
    try:
        return f"HTTP {status}: {orjson.loads(body)['error']['message']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"HTTP {status}"
