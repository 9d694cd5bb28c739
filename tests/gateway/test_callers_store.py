"""The callers component against real stores (memory:// and a real Redis): the records
primitives it added to the Store, gateway keys, identity, limits, and outages."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aredis

from knowctl.daemon.admin.api import AdminError, AdminRequest
from knowctl.daemon.admin.callers import routes as callers_routes
from knowctl.daemon.callers import keys as callers_keys
from knowctl.daemon.callers.registry import CallerRegistry, CallersConfigError
from knowctl.daemon.config import callers_config
from knowctl.daemon.context import CallContext
from knowctl.daemon.contracts import CallRefused
from knowctl.policy.paths import parse_path
from knowctl.policy.priority import Priority
from knowctl.settings import Settings, TierConfig
from knowctl.store import Store, StoreUnavailable, keys, open_store
from tests.support.net import LOOPBACK, free_port
from tests.support.redis_server import redis_server

pytestmark = pytest.mark.anyio

TIMEOUT = 2.0
GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"


def unique(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ctx(
    headers: list[tuple[str, str]] | None = None, query: str = "", peer: str = "127.0.0.1"
) -> CallContext:
    call = parse_path(GENERATE)
    assert call is not None
    items = list(headers or [])
    return CallContext(
        scope={},
        call=call,
        method="POST",
        raw_path=GENERATE,
        query=query,
        headers=items,
        header=dict(items),
        client_ip=peer,
    )


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"auth_mode": "keys", "store_timeout": TIMEOUT}
    return Settings(**{**base, **overrides})


async def registry_on(store: Store, **overrides: Any) -> CallerRegistry:
    registry = CallerRegistry(callers_config(settings(**overrides), holds_credentials=True), store)
    await registry.start()
    return registry


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# --- the records primitives -----------------------------------------------------------------------


async def test_hash_primitives(store: Store) -> None:
    name = keys.key_records()  # a real name; fields are unique per test run
    a, b = unique("field"), unique("field")
    assert await store.hash_get(name, a) is None
    await store.hash_set(name, a, b"one")
    await store.hash_set(name, b, b"\x00two")
    await store.hash_set(name, a, b"uno")
    assert await store.hash_get(name, a) == b"uno"
    everything = await store.hash_get_all(name)
    assert everything[a] == b"uno" and everything[b] == b"\x00two"
    assert await store.hash_delete(name, a, a, unique()) == 1
    assert await store.hash_delete(name) == 0
    assert await store.hash_get(name, a) is None
    assert await store.hash_delete(name, b) == 1


async def test_hash_of_missing_key_is_empty(store: Store) -> None:
    assert await store.hash_get_all(keys.key_lookup() + ":" + unique()) == {}


async def test_hash_names_are_checked(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.hash_set("not-ours", "f", b"v")
    with pytest.raises(ValueError):
        await store.hash_get_all("other:records")


async def test_records_share_one_tag_and_ip_scopes_are_apart() -> None:
    assert keys.hash_tag(keys.key_records()) == keys.hash_tag(keys.key_lookup()) == "keys"
    assert keys.ip_scope("10.0.0.1") != keys.user_scope("10.0.0.1")


async def test_hash_ops_are_unavailable_fast_without_a_server() -> None:
    dead = open_store(f"redis://{LOOPBACK}:{free_port()}/0", timeout=0.5)
    started = time.monotonic()
    for op in (
        dead.hash_set(keys.key_records(), "f", b"v"),
        dead.hash_get(keys.key_records(), "f"),
        dead.hash_get_all(keys.key_records()),
        dead.hash_delete(keys.key_records(), "f"),
    ):
        with pytest.raises(StoreUnavailable):
            await op
    assert time.monotonic() - started < 10
    await dead.close()


# --- gateway keys -----------------------------------------------------------------------------------


async def test_keys_identify_and_revoke(store: Store) -> None:
    registry = await registry_on(store)
    try:
        user = unique()
        key, record = await registry.keys.create(user, None, None, False)
        for headers, query in (
            ([("x-goog-api-key", key)], ""),
            ([("authorization", f"Bearer {key}")], ""),
            ([], f"alt=sse&key={key}"),
        ):
            call = ctx(headers, query)
            identity = await registry.identify(call)
            assert identity.user == user and identity.kind == "key"
            # The gateway key never travels upstream, whichever place it came in.
            assert not any(k in ("x-goog-api-key", "authorization") for k, _ in call.headers)
            assert "key=" not in call.query and key not in call.query
        with pytest.raises(CallRefused) as unknown:
            await registry.identify(ctx([("x-goog-api-key", key + "x")]))
        assert unknown.value.status == 401
        with pytest.raises(CallRefused) as missing:
            await registry.identify(ctx())
        assert missing.value.status == 401
        assert (await registry.keys.revoke(record.key_id)) is not None
        with pytest.raises(CallRefused) as revoked:
            await registry.identify(ctx([("x-goog-api-key", key)]))
        assert revoked.value.status == 403 and key not in revoked.value.message
        assert await registry.keys.revoke("k000000000000") is None
    finally:
        await registry.close()


async def test_trusted_keys_name_their_users_and_others_cannot(store: Store) -> None:
    registry = await registry_on(store)
    try:
        owner, plain = unique("backend"), unique("plain")
        trusted_key, _ = await registry.keys.create(owner, None, None, True)
        plain_key, _ = await registry.keys.create(plain, None, None, False)
        named = await registry.identify(ctx([("x-goog-api-key", trusted_key), ("x-knowctl-user", "s-1")]))
        assert named.user == f"{owner}:s-1"
        spoof = await registry.identify(ctx([("x-goog-api-key", plain_key), ("x-knowctl-user", "s-1")]))
        assert spoof.user == plain
        with pytest.raises(CallRefused) as bad:
            await registry.identify(ctx([("x-goog-api-key", trusted_key), ("x-knowctl-user", "a b")]))
        assert bad.value.status == 400
    finally:
        await registry.close()


async def test_tiers_caps_and_cache_scopes(store: Store) -> None:
    tiers = {"gold": TierConfig(limits="2/minute", max_priority="HIGH")}
    registry = await registry_on(store, tiers=tiers, cache_scope="tier")
    try:
        key, _ = await registry.keys.create(unique(), "gold", None, False)
        low_key, _ = await registry.keys.create(unique(), "gold", "LOW", False)
        identity = await registry.identify(ctx([("x-goog-api-key", key)]))
        assert identity.tier == "gold" and identity.max_priority is Priority.HIGH
        assert identity.cache_scope == "tier:gold"
        low = await registry.identify(ctx([("x-goog-api-key", low_key)]))
        assert low.max_priority is Priority.LOW
        outcomes = []
        for _ in range(3):
            call = ctx([("x-goog-api-key", key)])
            call.identity = await registry.identify(call)
            try:
                await registry.check_limits(call)
                outcomes.append(200)
            except CallRefused as refusal:
                outcomes.append(refusal.status)
        assert outcomes == [200, 200, 429]
        assert dict(call.response_headers)[b"ratelimit-policy"] == b'"minute";q=2;w=60'
    finally:
        await registry.close()


async def test_the_store_never_holds_a_plain_key(redis_url: str) -> None:
    store = open_store(redis_url, timeout=TIMEOUT)
    registry = await registry_on(store)
    try:
        key, _ = await registry.keys.create(unique(), None, None, True)
        await registry.identify(ctx([("x-goog-api-key", key)]))
        raw = aredis.Redis.from_url(redis_url)
        try:
            async for name in raw.scan_iter(match="knowctl:*"):
                found = await raw.type(name)
                kind = found.decode() if isinstance(found, bytes) else found
                if kind == "hash":
                    values = [b for pair in (await raw.hgetall(name)).items() for b in pair]
                elif kind == "string":
                    values = [await raw.get(name) or b""]
                else:
                    continue
                assert key.encode() not in name
                assert all(key.encode() not in v for v in values), name
        finally:
            await raw.aclose()
    finally:
        await registry.close()
        await store.close()


async def test_revocation_reaches_another_daemon_through_pubsub(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache that would otherwise keep the key for an hour: only the announcement can end it.
    monkeypatch.setattr(callers_keys, "CACHE_TTL_S", 3600.0)
    stores = [open_store(redis_url, timeout=TIMEOUT) for _ in range(2)]
    first, second = [await registry_on(s) for s in stores]
    try:
        key, record = await first.keys.create(unique(), None, None, False)
        assert (await second.identify(ctx([("x-goog-api-key", key)]))).kind == "key"  # now cached
        await first.keys.revoke(record.key_id)

        async def refused() -> bool:
            try:
                await second.identify(ctx([("x-goog-api-key", key)]))
            except CallRefused as refusal:
                return refusal.status == 403
            return False

        await eventually(refused)
    finally:
        for registry in (first, second):
            await registry.close()
        for s in stores:
            await s.close()


# --- identity in the other modes ---------------------------------------------------------------------


async def test_passthrough_and_anonymous(store: Store) -> None:
    passthrough = CallerRegistry(
        callers_config(settings(auth_mode=None, trusted_proxies="10.0.0.0/8"), holds_credentials=False), store
    )
    assert passthrough.mode == "passthrough"
    call = ctx([("x-goog-api-key", "AIzaCallerOwn")])
    unverified = await passthrough.identify(call)  # not seen to succeed yet: its address
    assert unverified.kind == "anonymous" and unverified.user == "127.0.0.1"
    assert ("x-goog-api-key", "AIzaCallerOwn") in call.headers  # forwarded, it is theirs
    call.identity = unverified
    passthrough.upstream_answered(call, 200)
    identity = await passthrough.identify(ctx([("x-goog-api-key", "AIzaCallerOwn")]))
    assert identity.kind == "passthrough" and identity.cache_scope == identity.user
    assert identity.user == unverified.credential == unverified.cache_scope
    assert "AIzaCallerOwn" not in identity.user
    other = await passthrough.identify(ctx([("authorization", "Bearer ya29.other")]))
    assert other.credential != identity.user
    anonymous = CallerRegistry(
        callers_config(settings(auth_mode="anonymous", trusted_proxies="10.0.0.0/8"), holds_credentials=True),
        store,
    )
    spoofed = ctx([("x-forwarded-for", "6.6.6.6")], peer="203.0.113.9")
    assert (await anonymous.identify(spoofed)).user == "203.0.113.9"
    proxied = ctx([("x-forwarded-for", "6.6.6.6, 198.51.100.4")], peer="10.0.0.3")
    assert (await anonymous.identify(proxied)).user == "198.51.100.4"


async def test_keys_mode_without_credentials_refuses_to_start(store: Store) -> None:
    registry = CallerRegistry(callers_config(settings(), holds_credentials=False), store)
    with pytest.raises(CallersConfigError, match="KNOWCTL_GOOGLE_API_KEY"):
        await registry.start()
    assert (
        CallerRegistry(callers_config(settings(auth_mode=None), holds_credentials=True), store).mode == "keys"
    )


# --- limits --------------------------------------------------------------------------------------------


async def _limited(registry: CallerRegistry, call: CallContext) -> int:
    call.identity = await registry.identify(call)
    try:
        await registry.check_limits(call)
    except CallRefused as refusal:
        assert refusal.retry_after is not None and 0 < refusal.retry_after <= 60
        return refusal.status
    return 200


async def test_user_limits_with_headers_and_ip_limits(store: Store) -> None:
    registry = await registry_on(
        store, auth_mode="anonymous", user_limits="3/minute,50/hour", ip_limits="4/minute"
    )
    try:
        peer = f"198.51.100.{uuid.uuid4().int % 200 + 1}"
        statuses = [await _limited(registry, ctx(peer=peer)) for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        last = ctx(peer=peer)
        assert await _limited(registry, last) == 429
        headers = dict(last.response_headers)
        assert headers[b"ratelimit-policy"] == b'"minute";q=3;w=60, "hour";q=50;w=3600, "ip-minute";q=4;w=60'
        assert headers[b"ratelimit"].startswith(b'"minute";r=0;t=')
        usage, degraded = await registry.usage(peer, None)
        assert not degraded and [(u["window"], u["used"], u["remaining"]) for u in usage] == [
            ("minute", 3, 0),
            ("hour", 3, 47),
        ]
    finally:
        await registry.close()


@pytest.mark.parametrize("refused_by", ["address", "user"])
async def test_a_refusal_gives_the_other_scopes_unit_back(store: Store, refused_by: str) -> None:
    """The user's and the address's checks run at once: when one refuses the call, the unit
    the other recorded comes back."""
    tight, loose = "1/minute", "5/minute"
    user_limits, ip_limits = (loose, tight) if refused_by == "address" else (tight, loose)
    registry = await registry_on(store, user_limits=user_limits, ip_limits=ip_limits)
    try:
        user = unique()
        key, _ = await registry.keys.create(user, None, None, False)
        peer = f"203.0.113.{uuid.uuid4().int % 200 + 1}"
        assert await _limited(registry, ctx([("x-goog-api-key", key)], peer=peer)) == 200
        assert await _limited(registry, ctx([("x-goog-api-key", key)], peer=peer)) == 429
        if refused_by == "address":
            scope, windows = keys.user_scope(user), registry.user_windows(None)
        else:
            scope, windows = keys.ip_scope(peer), registry._ip_windows
        assert [u.used for u in await store.usage(scope, windows)] == [1]
    finally:
        await registry.close()


async def test_limits_hold_across_daemons_sharing_redis(redis_url: str) -> None:
    stores = [open_store(redis_url, timeout=TIMEOUT) for _ in range(3)]
    registries = [await registry_on(s, user_limits="10/minute") for s in stores]
    try:
        key, _ = await registries[0].keys.create(unique(), None, None, False)
        calls = [_limited(registries[i % 3], ctx([("x-goog-api-key", key)])) for i in range(30)]
        statuses = await asyncio.gather(*calls)
        assert statuses.count(200) == 10 and statuses.count(429) == 20
    finally:
        for registry in registries:
            await registry.close()
        for s in stores:
            await s.close()


async def test_store_outage_degrades_to_local_state() -> None:
    with redis_server() as server:
        store = open_store(server.url, timeout=0.5)
        registry = await registry_on(store, user_limits="3/minute")
        try:
            seen, _ = await registry.keys.create("seen", None, None, False)
            unseen, _ = await registry.keys.create("unseen", None, None, False)
            assert await _limited(registry, ctx([("x-goog-api-key", seen)])) == 200
            server.stop()
            started = time.monotonic()
            # A key seen before still works; limits count against this daemon's share, in a
            # local window that starts empty (per-user limits: fairness, not the provider's quota).
            statuses = [await _limited(registry, ctx([("x-goog-api-key", seen)])) for _ in range(4)]
            assert statuses == [200, 200, 200, 429]
            with pytest.raises(CallRefused) as never_seen:
                await registry.identify(ctx([("x-goog-api-key", unseen)]))
            assert never_seen.value.status == 503
            assert time.monotonic() - started < 20  # bounded by timeouts, no hang
            usage, degraded = await registry.usage("seen", None)
            assert degraded and usage[0]["used"] == 3  # the whole share, used locally
        finally:
            await registry.close()
            await store.close()


# --- admin routes ----------------------------------------------------------------------------------------


def request(method: str, path: str, body: Any = None, **params: str) -> AdminRequest:
    return AdminRequest(method, path, params, {}, body, {})


async def test_admin_routes_validate_and_never_list_keys(store: Store) -> None:
    tiers = {"free": TierConfig(limits="5/minute", max_priority="MEDIUM")}
    registry = await registry_on(store, tiers=tiers)
    handlers = {(m, p): h for m, p, h in callers_routes(registry)}
    create = handlers[("POST", "/api/keys")]
    try:
        for body, fragment in (
            ({"user": "a b"}, "user"),
            ({}, "user"),
            ({"user": "x", "tier": "platinum"}, "unknown tier"),
            ({"user": "x", "max_priority": "URGENT"}, "max_priority"),
            ({"user": "x", "tier": "free", "max_priority": "HIGH"}, "above tier"),
            ({"user": "x", "trusted": "yes"}, "trusted"),
            ({"user": "x", "admin": True}, "unknown field"),
            ([1], "JSON object"),
        ):
            with pytest.raises(AdminError) as refused:
                await create(request("POST", "/api/keys", body))
            assert refused.value.status == 400 and fragment in refused.value.message
        user = unique()
        made = await create(
            request("POST", "/api/keys", {"user": user, "tier": "free", "max_priority": "low"})
        )
        assert made.status == 201 and made.body["key"].startswith("kc_")
        assert made.body["max_priority"] == "LOW" and made.body["tier"] == "free"
        listed = await handlers[("GET", "/api/keys")](request("GET", "/api/keys"))
        mine = [k for k in listed.body["keys"] if k["user"] == user]
        assert len(mine) == 1 and "key" not in mine[0] and made.body["key"] not in str(listed.body)
        usage = await handlers[("GET", "/api/users/{user}/usage")](request("GET", "/x", user=user))
        assert usage.body["tier"] == "free" and usage.body["windows"][0]["limit"] == 5
        revoke = handlers[("DELETE", "/api/keys/{key_id}")]
        done = await revoke(request("DELETE", "/x", key_id=made.body["key_id"]))
        assert done.body["revoked"] is not None
        for key_id in ("k000000000000", "../../x"):
            with pytest.raises(AdminError) as gone:
                await revoke(request("DELETE", "/x", key_id=key_id))
            assert gone.value.status == 404
        with pytest.raises(AdminError) as bad_name:
            await handlers[("GET", "/api/users/{user}/usage")](request("GET", "/x", user="a b"))
        assert bad_name.value.status == 400
    finally:
        await registry.close()


async def test_the_gateways_own_calls_and_public_topics(store: Store) -> None:
    registry = await registry_on(store, user_limits="1/minute")
    try:
        for _ in range(3):
            internal = ctx()
            internal.notes.internal = "topics"
            identity = await registry.identify(internal)
            assert identity.user == "internal.topics"
            internal.identity = identity
            await registry.check_limits(internal)  # never limited
            assert internal.response_headers == []
        public = ctx(peer="192.0.2.77")
        public.notes.topic = "tides"
        assert (await registry.identify(public)).user == "192.0.2.77"
        with pytest.raises(CallRefused) as no_key:
            await registry.identify(ctx(peer="192.0.2.77"))
        assert no_key.value.status == 401
    finally:
        await registry.close()
