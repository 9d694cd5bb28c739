"""Who is calling, in process against real stores (memory://, Redis, Redis Cluster): pass-through
credentials verified only by an upstream success, one store namespace per kind of caller,
priority caps for callers the gateway has not authenticated, what keys mode strips, the
cache scopes, and fair shares of the quota wait queue."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from knowctl.daemon.callers import registry as callers_module
from knowctl.daemon.callers.registry import CallerRegistry
from knowctl.daemon.config import callers_config
from knowctl.daemon.context import CallContext
from knowctl.daemon.contracts import CallRefused
from knowctl.daemon.quota.waitqueue import QueuePlaces, WaitQueue
from knowctl.policy import callers as policy
from knowctl.policy.identity import Identity
from knowctl.policy.paths import parse_path
from knowctl.policy.priority import Priority
from knowctl.settings import Settings
from knowctl.store import Store, keys

pytestmark = pytest.mark.anyio

GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"


def ctx(
    headers: list[tuple[str, str]] | None = None, query: str = "", peer: str = "198.51.100.7"
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


def registry(store: Store, mode: str, **overrides: Any) -> CallerRegistry:
    settings = Settings(**{"auth_mode": mode, "store_timeout": 2.0, **overrides})
    return CallerRegistry(callers_config(settings, holds_credentials=mode != "passthrough"), store)


def address() -> str:
    n = uuid.uuid4().int
    return f"203.0.{n % 250 + 1}.{n // 250 % 250 + 1}"


async def status_of(registry: CallerRegistry, call: CallContext) -> int:
    call.identity = await registry.identify(call)
    try:
        await registry.check_limits(call)
    except CallRefused as refusal:
        return refusal.status
    return 200


# --- pass-through: verified by the upstream only ------------------------------------------------------------


async def test_a_credential_is_its_address_until_it_succeeds_upstream(store: Store) -> None:
    callers = registry(store, "passthrough")
    peer = address()
    call = ctx([("x-goog-api-key", "AIza-mine")], peer=peer)
    unverified = await callers.identify(call)
    name = policy.credential_identity("AIza-mine")
    assert unverified == Identity(
        user=peer, kind="anonymous", max_priority=Priority.MEDIUM, cache_scope=name, credential=name
    )
    call.identity = unverified
    callers.upstream_answered(call, 400)  # refused: still unverified
    assert (await callers.identify(ctx([("x-goog-api-key", "AIza-mine")], peer=peer))).kind == "anonymous"
    callers.upstream_answered(call, 200)
    verified = await callers.identify(ctx([("x-goog-api-key", "AIza-mine")], peer=address()))
    assert verified == Identity(user=name, kind="passthrough", cache_scope=name, credential=name)
    # The same credential in another place Google reads it is the same caller.
    moved = await callers.identify(ctx([], query="%6Bey=AIza-mine", peer=peer))
    assert moved.kind == "passthrough" and moved.user == name
    call.identity = verified
    callers.upstream_answered(call, 403)  # revoked at Google: forgotten at once
    assert (await callers.identify(ctx([("x-goog-api-key", "AIza-mine")], peer=peer))).kind == "anonymous"


async def test_verified_credentials_are_bounded_and_expire(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(callers_module, "VERIFIED_MAX", 3)
    callers = registry(store, "passthrough")
    for i in range(4):
        call = ctx([("x-goog-api-key", f"AIza-{i}")])
        call.identity = await callers.identify(call)
        callers.upstream_answered(call, 200)
    kinds = [(await callers.identify(ctx([("x-goog-api-key", f"AIza-{i}")]))).kind for i in range(4)]
    assert kinds == ["anonymous", "passthrough", "passthrough", "passthrough"]  # the oldest went
    monkeypatch.setattr(callers_module, "VERIFIED_TTL_S", 0.05)
    call = ctx([("x-goog-api-key", "AIza-brief")])
    call.identity = await callers.identify(call)
    callers.upstream_answered(call, 200)
    assert (await callers.identify(ctx([("x-goog-api-key", "AIza-brief")]))).kind == "passthrough"
    await asyncio.sleep(0.1)
    assert (await callers.identify(ctx([("x-goog-api-key", "AIza-brief")]))).kind == "anonymous"


async def test_without_a_credential_a_pass_through_call_has_no_cache_scope(store: Store) -> None:
    callers = registry(store, "passthrough")
    identity = await callers.identify(ctx([("cookie", "a=b")], query="alt=sse"))
    assert identity.kind == "anonymous" and identity.cache_scope is None and identity.credential is None


async def test_made_up_credentials_count_against_their_address(store: Store) -> None:
    callers = registry(store, "passthrough", user_limits="3/minute")
    peer = address()
    statuses = [
        await status_of(callers, ctx([("x-goog-api-key", f"AIza-junk-{i}")], peer=peer)) for i in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429]
    windows = callers.user_windows(None)
    assert [u.used for u in await store.usage(keys.anonymous_scope(peer), windows)] == [3]
    name = policy.credential_identity("AIza-junk-0")
    assert [u.used for u in await store.usage(keys.passthrough_scope(name), windows)] == [0]


# --- one namespace per kind --------------------------------------------------------------------------------------


def test_each_kind_of_caller_has_its_own_scope() -> None:
    scopes = {keys.caller_scope(kind, "127.0.0.7") for kind in ("key", "passthrough", "anonymous")}
    assert len(scopes) == 3 and keys.ip_scope("127.0.0.7") not in scopes
    assert keys.caller_scope("key", "alice") == keys.user_scope("alice")  # key users' windows stay
    tags = {keys.hash_tag(keys.window_keys(s, "minute").log) for s in scopes}
    assert tags == {"u:127.0.0.7", "p:127.0.0.7", "a:127.0.0.7"}
    with pytest.raises(ValueError):
        keys.caller_scope("internal", "topics")


async def test_a_key_user_named_like_an_address_or_a_credential_counts_apart(store: Store) -> None:
    keyed = registry(store, "keys", user_limits="2/minute")
    passthrough = registry(store, "passthrough", user_limits="2/minute")
    await keyed.start()
    try:
        peer = address()
        credential = f"AIza-{uuid.uuid4().hex}"
        cred_name = policy.credential_identity(credential)
        as_address, _ = await keyed.keys.create(peer, None, None, False)
        as_credential, _ = await keyed.keys.create(cred_name, None, None, False)
        verify = ctx([("x-goog-api-key", credential)], peer=peer)
        verify.identity = await passthrough.identify(verify)
        passthrough.upstream_answered(verify, 200)
        # The address and the credential use up their own windows ...
        for _ in range(2):
            assert await status_of(passthrough, ctx([], peer=peer)) == 200
            assert await status_of(passthrough, ctx([("x-goog-api-key", credential)], peer=peer)) == 200
        # ... and the key users named like them still have all of theirs.
        for key in (as_address, as_credential):
            assert [await status_of(keyed, ctx([("x-goog-api-key", key)], peer=peer)) for _ in range(3)] == [
                200,
                200,
                429,
            ]
        for callers, name, kind in (
            (passthrough, peer, None),
            (passthrough, cred_name, None),
            (keyed, peer, "key"),
        ):
            usage, _ = await callers.usage(name, None, kind)
            assert usage[0]["used"] == 2, (name, kind)
    finally:
        await keyed.close()
        await passthrough.close()


# --- priorities, stripping and cache scopes ----------------------------------------------------------------------


async def test_callers_the_gateway_has_not_authenticated_are_capped(store: Store) -> None:
    anonymous = registry(store, "anonymous", unauthenticated_max_priority="LOW")
    assert (await anonymous.identify(ctx())).max_priority is Priority.LOW
    keyed = registry(store, "keys")
    await keyed.start()
    try:
        key, _ = await keyed.keys.create(f"u-{uuid.uuid4().hex[:8]}", None, None, False)
        assert (await keyed.identify(ctx([("x-goog-api-key", key)]))).max_priority is None
        topic = ctx()
        topic.notes.topic = "tides"
        assert (await keyed.identify(topic)).max_priority is Priority.MEDIUM
    finally:
        await keyed.close()


async def test_keys_mode_strips_every_credential_and_the_browser_state(store: Store) -> None:
    keyed = registry(store, "keys")
    await keyed.start()
    try:
        key, _ = await keyed.keys.create(f"u-{uuid.uuid4().hex[:8]}", None, None, False)
        headers = [
            ("x-goog-api-key", key),
            ("cookie", "session=1"),
            ("x-goog-user-project", "other"),
            ("x-goog-iam-authorization-token", "t"),
            ("x-knowctl-user", "s"),
            ("content-type", "application/json"),
        ]
        call = ctx(headers, query=f"alt=sse&access_token={key}&%24key={key}&userProject=p")
        assert (await keyed.identify(call)).kind == "key"
        assert call.headers == [("x-knowctl-user", "s"), ("content-type", "application/json")]
        assert set(call.header) == {"x-knowctl-user", "content-type"}
        assert call.query == "alt=sse"
    finally:
        await keyed.close()


async def test_cache_scopes(store: Store) -> None:
    anonymous = registry(store, "anonymous")
    assert (await anonymous.identify(ctx(peer="198.51.100.9"))).cache_scope == "addr:198.51.100.9"
    shared = registry(store, "anonymous", cache_scope="shared")
    assert (await shared.identify(ctx())).cache_scope == "shared"
    keyed = registry(store, "keys")
    await keyed.start()
    try:
        user = f"u-{uuid.uuid4().hex[:8]}"
        key, _ = await keyed.keys.create(user, None, None, False)
        assert (await keyed.identify(ctx([("x-goog-api-key", key)]))).cache_scope == f"user:{user}"
    finally:
        await keyed.close()


# --- fair shares of the wait queue ----------------------------------------------------------------------------


async def test_queue_places_are_counted_per_caller_across_queues() -> None:
    places = QueuePlaces(2)
    flash: WaitQueue[int] = WaitQueue(places)
    pro: WaitQueue[int] = WaitQueue(places)
    a1, _ = flash.push(Priority.CRITICAL, 0, "anonymous:1.2.3.4")
    assert not places.full("anonymous:1.2.3.4")
    a2, _ = pro.push(Priority.CRITICAL, 0, "anonymous:1.2.3.4")  # another model: the same share
    assert places.full("anonymous:1.2.3.4") and not places.full("key:alice")
    assert not places.full(None)  # the gateway's own calls
    pro.push(Priority.LOW, 0, None)
    assert flash.remove(a1) and not flash.remove(a1)  # a second removal gives nothing back
    assert places.held("anonymous:1.2.3.4") == 1 and not places.full("anonymous:1.2.3.4")
    flash.push(Priority.HIGH, 0, "key:alice")
    assert [w.caller for w in pro.drain()] == ["anonymous:1.2.3.4", None]
    assert a2.caller == "anonymous:1.2.3.4" and places.held("anonymous:1.2.3.4") == 0
    assert len(places) == 1 and places.held("key:alice") == 1
    unbounded: WaitQueue[int] = WaitQueue()
    for _ in range(50):
        unbounded.push(Priority.MEDIUM, 0, "anonymous:1.2.3.4")
    assert not unbounded.places.full("anonymous:1.2.3.4")


def test_identity_callers() -> None:
    assert Identity("1.2.3.4", "anonymous").caller == "anonymous:1.2.3.4"
    assert Identity("1.2.3.4", "key").caller == "key:1.2.3.4"  # apart from the address
    assert Identity("internal.topics", "internal").caller is None
