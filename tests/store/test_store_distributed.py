"""The Redis store on a real Redis Cluster and behind real Sentinels.

Every generic store test also runs on the Cluster (the ``cluster`` param of ``store_url``);
this module covers what only a distributed set-up has: slots, nodes, failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aredis
from redis.crc import key_slot

from knowctl.store import Store, StoreUnavailable, Window, keys, open_store
from knowctl.store.redis.cluster import RedisClusterStore, decode_cursor, encode_cursor
from knowctl.store.redis.opening import open_redis_store
from knowctl.store.redis.store import RedisStore
from knowctl.store.urls import check_store_url, parse_multi_host
from tests.store import test_store
from tests.support.net import LOOPBACK
from tests.support.redis_cluster import RedisCluster, SentinelGroup, redis_cluster

pytestmark = pytest.mark.anyio

TIMEOUT = 2.0


def backend(url: str, timeout: float = TIMEOUT) -> RedisStore:
    """The bare backend, without what open_store may wrap around it: these tests are about
    what Redis itself does."""
    return open_redis_store(url, timeout=timeout)


@pytest.fixture
async def cluster_store(redis_cluster_url: str) -> AsyncIterator[RedisClusterStore]:
    store = backend(redis_cluster_url)
    assert isinstance(store, RedisClusterStore)
    yield store
    await store.close()


def rid() -> str:
    return uuid.uuid4().hex


def node_clients(cluster: RedisCluster) -> list[aredis.Redis]:
    return [aredis.Redis(host=LOOPBACK, port=n.port) for n in cluster.nodes]


# --- every Lua script touches one slot ------------------------------------------------------------

SCOPES = [
    keys.quota_scope("gemini-2.5-flash"),
    keys.quota_scope("models/gemini-2.5-pro-preview-06-05"),
    keys.user_scope("alice@example.com"),
    keys.user_scope("a}b{c%7D"),  # braces cannot end the tag early
    keys.ip_scope("2001:db8::1"),
    keys.ip_scope("203.0.113.9"),
]
WINDOWS = [
    Window("rpm", 60, 10),
    Window("tpm", 60, 1000),
    Window("rpd", 86400, 100, "America/Los_Angeles"),
    Window("tpd", 86400, 10**6, "America/Los_Angeles"),
]


async def test_every_script_keeps_its_keys_in_one_slot(
    cluster_store: RedisClusterStore, redis_cluster_proc: RedisCluster
) -> None:
    raw = node_clients(redis_cluster_proc)[0]
    try:
        slots: set[int] = set()
        for scope in SCOPES:
            # The very keys and arguments acquire/adjust/usage send to EVALSHA.
            script_keys, _ = cluster_store._script_input(scope, WINDOWS, rid(), [1] * 4, [1] * 4)
            assert len(script_keys) == 4 * len(WINDOWS)
            with_hold = (
                [*script_keys, keys.quota_hold(scope.split(":", 1)[1])] if scope[0] == "q" else script_keys
            )
            server = {
                int(await raw.execute_command("CLUSTER KEYSLOT", k))  # type: ignore[no-untyped-call]
                for k in with_hold
            }
            assert server == {key_slot(k.encode()) for k in with_hold}
            assert len(server) == 1, scope
            slots |= server
        # delete_if_equal's single key, and the two key-record hashes one tag shares
        assert len({key_slot(k.encode()) for k in (keys.key_records(), keys.key_lookup())}) == 1
        # one tag per scope, not one for the whole gateway
        assert len(slots) == len(SCOPES)
    finally:
        await raw.aclose()


async def test_scopes_spread_over_every_primary(
    cluster_store: RedisClusterStore, redis_cluster_proc: RedisCluster
) -> None:
    await cluster_store.ping()
    owners = {
        cluster_store._client.get_node_from_key(keys.window_keys(keys.quota_scope(f"m{i}"), "rpm").log).name  # type: ignore[union-attr]
        for i in range(30)
    }
    assert len(owners) == len(redis_cluster_proc.nodes)


async def test_windows_admit_exactly_the_limit_on_every_node(redis_cluster_url: str) -> None:
    # Several models at once, so the concurrent scripts run on all three primaries.
    stores = [backend(redis_cluster_url) for _ in range(3)]
    ws = [Window("rpm", 60, 20), Window("tpm", 60, 200)]
    scopes = [keys.quota_scope(f"spread-{rid()[:8]}-{i}") for i in range(6)]
    try:
        results = await asyncio.gather(
            *(stores[i % 3].acquire(scopes[i % 6], ws, [1, 7], reservation_id=rid()) for i in range(6 * 40))
        )
        for n, scope in enumerate(scopes):
            admitted = sum(r.admitted for i, r in enumerate(results) if i % 6 == n)
            assert admitted == 20  # 20 * 7 = 140 tokens fit in 200: the rpm window binds
            used = [u.used for u in await stores[0].usage(scope, ws)]
            assert used == [20, 140]
    finally:
        for s in stores:
            await s.close()


async def test_scripts_reload_on_the_node_that_lost_them(
    cluster_store: RedisClusterStore, redis_cluster_proc: RedisCluster
) -> None:
    ws = [Window("rpm", 60, 2)]
    scopes = [keys.quota_scope(f"flush-{rid()[:8]}-{i}") for i in range(12)]  # on every node
    for sc in scopes:
        assert (await cluster_store.acquire(sc, ws, [1], reservation_id=rid())).admitted
    for raw in node_clients(redis_cluster_proc):
        await raw.script_flush()
        await raw.aclose()
    for sc in scopes:  # NOSCRIPT on each node -> SCRIPT LOAD on every primary -> run again
        assert (await cluster_store.acquire(sc, ws, [1], reservation_id=rid())).admitted
        assert not (await cluster_store.acquire(sc, ws, [1], reservation_id=rid())).admitted


async def test_scripts_agree_with_the_memory_backend_on_the_cluster(redis_cluster_url: str) -> None:
    await test_store.test_redis_scripts_and_memory_backend_agree(redis_cluster_url)


# --- scans, unlinks, pub/sub across nodes -------------------------------------------------------------


def test_scan_cursor_round_trips() -> None:
    assert encode_cursor(0, 0) == 0
    for index, node_cursor in [(1, 0), (0, 5), (2, 2**64 - 1), (1023, 17)]:
        cursor = encode_cursor(index, node_cursor)
        assert cursor != 0 and decode_cursor(cursor) == (index, node_cursor)


async def test_scan_and_unlink_cover_every_primary(
    cluster_store: RedisClusterStore, redis_cluster_proc: RedisCluster
) -> None:
    tag = rid()[:10]
    names = [keys.cache_entry(f"gen:m{tag}:{i:04x}") for i in range(300)]
    for name in names:
        await cluster_store.set(name, b"v", ttl=30)
    found: set[str] = set()
    cursor, steps = 0, 0
    while True:
        cursor, batch = await cluster_store.scan_keys(keys.cache_entries_match(f"gen:m{tag}:*"), cursor, 50)
        found.update(batch)
        steps += 1
        if cursor == 0:
            break
    assert found == set(names)
    assert steps >= len(redis_cluster_proc.nodes)
    owners = {cluster_store._client.get_node_from_key(n).name for n in names}  # type: ignore[union-attr]
    assert len(owners) == len(redis_cluster_proc.nodes)
    # 300 keys on ~300 slots: UNLINKs grouped by slot, pipelined per node
    assert await cluster_store.unlink(*names, *names[:10]) == 300
    for name in names[:20]:
        assert await cluster_store.get(name) is None


async def test_scan_of_one_literal_tag_asks_only_its_node(cluster_store: RedisClusterStore) -> None:
    key = keys.cache_entry(f"topic:exact-{rid()}")
    await cluster_store.set(key, b"v", ttl=30)
    cursor, found = await cluster_store.scan_keys(key.replace(":v", ":?"), 0, 1000)
    while cursor:
        cursor, more = await cluster_store.scan_keys(key.replace(":v", ":?"), cursor, 1000)
        found += more
    assert found == [key]
    await cluster_store.unlink(key)


async def test_a_message_published_on_any_node_reaches_the_subscriber(
    cluster_store: RedisClusterStore, redis_cluster_proc: RedisCluster
) -> None:
    channel = keys.channel(f"spread-{rid()}")
    async with cluster_store.subscribe(channel) as sub:
        for n, raw in enumerate(node_clients(redis_cluster_proc)):
            await raw.publish(channel, f"from node {n}".encode())
            assert await asyncio.wait_for(anext(sub), 3) == f"from node {n}".encode()
            await raw.aclose()


# --- a primary lost: CLUSTERDOWN, then recovery -------------------------------------------------------


async def test_a_lost_primary_is_unavailable_quickly_and_recovers() -> None:
    with redis_cluster() as cluster:
        store = backend(cluster.url, 0.5)
        ws = [Window("rpm", 60, 100)]
        scopes = [keys.quota_scope(f"down-{i}") for i in range(12)]
        for sc in scopes:
            assert (await store.acquire(sc, ws, [1], reservation_id=rid())).admitted
        victim = cluster.nodes[1]
        victim.kill()
        # First the dead node's slots refuse connections; after the node timeout (2 s) the
        # others answer CLUSTERDOWN too (full coverage lost). Either way: fast StoreUnavailable.
        deadline = time.monotonic() + 2.8
        while time.monotonic() < deadline:
            for sc in scopes:
                started = time.monotonic()
                with contextlib.suppress(StoreUnavailable):
                    await store.acquire(sc, ws, [1], reservation_id=rid())
                assert time.monotonic() - started < 0.5 + 0.3
            await asyncio.sleep(0.1)
        victim.start()  # same port and nodes.conf: it rejoins with its slots
        recovered = await _until_ok(store, scopes, ws, within=20)
        assert recovered < 20
        await store.close()


async def _until_ok(store: Store, scopes: list[str], ws: list[Window], within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        try:
            for sc in scopes:
                await store.usage(sc, ws)
            return time.monotonic() - started
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    pytest.fail(f"store did not recover within {within}s")


# --- Sentinel --------------------------------------------------------------------------------------


async def test_sentinel_store_follows_a_failover(sentinel_proc: SentinelGroup) -> None:
    group = sentinel_proc
    store = backend(group.url, 0.5)
    assert "redis+sentinel://" in store.describe()
    sc, limit = keys.quota_scope(f"failover-{rid()[:8]}"), 30
    ws = [Window("rpm", 60, limit)]
    for _ in range(10):
        assert (await store.acquire(sc, ws, [1], reservation_id=rid())).admitted
    # Asynchronous replication: let the replica catch up before the master dies, so the
    # counts it takes over are the ones admitted (writes in flight at a crash can be lost).
    _wait_replica_in_sync(group)
    channel = keys.channel(f"failover-{rid()}")
    sub = store.subscribe(channel)
    await sub.start()

    group.master.kill()
    killed = time.monotonic()
    admitted, unavailable, ok_streak = 10, 0, 0
    while ok_streak < 3:
        assert time.monotonic() - killed < 15, "no failover within 15 s"
        started = time.monotonic()
        try:
            outcome = await store.acquire(sc, ws, [1], reservation_id=rid())
            admitted += outcome.admitted
            ok_streak += 1
        except StoreUnavailable:
            unavailable += 1
            ok_streak = 0
            await asyncio.sleep(0.1)
        assert time.monotonic() - started < 0.5 + 0.3, "a store call outlasted its timeout"
    assert group.master_port() == group.replica.port
    assert unavailable > 0  # the switch was seen, not skipped

    # The old subscription ends with StoreUnavailable; a new one lands on the new master.
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(anext(sub), 5)
    async with store.subscribe(channel) as fresh:
        await store.publish(channel, b"after failover")
        assert await asyncio.wait_for(anext(fresh), 3) == b"after failover"

    # No count lost or doubled: a call that timed out may have been recorded (only ever
    # under-admitting), and the limit holds exactly.
    [u] = await store.usage(sc, ws)
    assert admitted <= u.used <= admitted + unavailable
    while (await store.acquire(sc, ws, [1], reservation_id=rid())).admitted:
        admitted += 1
    [u] = await store.usage(sc, ws)
    assert u.used == limit
    await store.close()


async def test_sentinel_store_leaves_a_demoted_master_within_seconds(sentinel_proc: SentinelGroup) -> None:
    # SENTINEL FAILOVER promotes the replica while the old master lives on, still taking
    # writes until Sentinel demotes it seconds later: the store must notice on its own.
    group = sentinel_proc
    store = backend(group.url, 0.5)
    sc, ws = keys.quota_scope(f"demoted-{rid()[:8]}"), [Window("rpm", 60, 10_000)]
    assert (await store.acquire(sc, ws, [1], reservation_id=rid())).admitted
    assert group.sentinels[0].command("SENTINEL", "FAILOVER", group.service).startswith("+OK")
    started, switched = time.monotonic(), None
    while switched is None or time.monotonic() - switched < 2.5:
        assert time.monotonic() - started < 15, "Sentinel did not switch the master"
        if switched is None and group.master_port() == group.replica.port:
            switched = time.monotonic()
        call = time.monotonic()
        with contextlib.suppress(StoreUnavailable):
            await store.acquire(sc, ws, [1], reservation_id=rid())
        assert time.monotonic() - call < 0.5 + 0.3
        await asyncio.sleep(0.05)
    # Every call since (at most a check interval after the switch) went to the new master.
    [u] = await store.usage(sc, ws)
    log_key = keys.window_keys(sc, "rpm").log
    assert group.replica.command("ZCARD", log_key).strip() == f":{u.entries}"
    assert u.entries > 0
    await store.close()


def _wait_replica_in_sync(group: SentinelGroup, timeout: float = 5.0) -> None:
    def offset(text: str, field: str) -> int:
        for line in text.splitlines():
            if line.startswith(field + ":"):
                return int(line.split(":", 1)[1])
        return -1

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        master = offset(group.master.command("INFO", "replication"), "master_repl_offset")
        replica = offset(group.replica.command("INFO", "replication"), "slave_repl_offset")
        if master > 0 and master == replica:
            return
        time.sleep(0.02)
    raise TimeoutError("replica did not catch up")


# --- URLs -----------------------------------------------------------------------------------------


def test_cluster_and_sentinel_urls() -> None:
    c = parse_multi_host("redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2,[::1]:7002/")
    assert c.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert (c.password, c.username, c.tls) == ("s3cret", None, False)
    s = parse_multi_host("rediss+sentinel://app:pw@s1:26380,s2/mymaster/3?sentinel_password=sp")
    assert s.hosts == (("s1", 26380), ("s2", 26379))
    assert (s.service, s.db, s.username, s.password, s.tls) == ("mymaster", 3, "app", "pw", True)
    assert s.sentinel_password == "sp"
    for bad in (
        "redis+cluster://h:1/2",  # Cluster has only database 0
        "redis+cluster:///",
        "redis+cluster://h:notaport/",
        "redis+cluster://h:1/?password=x",
        "redis+sentinel://h:1/",  # no service
        "redis+sentinel://h:1/svc/x",
        "redis+sentinel://h:1/svc/0?timeout=1",
        "redis+sentinels://h/svc",
    ):
        with pytest.raises(ValueError):
            check_store_url(bad)


def test_multi_host_urls_are_described_without_their_passwords() -> None:
    for url, hosts in (
        ("redis+cluster://:topsecret@h1:7000,h2:7001/", "@h1:7000,h2:7001/"),
        ("redis+sentinel://user:topsecret@s1,s2:26380/svc/0?sentinel_password=alsosecret", "@s1,s2:26380/"),
    ):
        described = open_store(url, timeout=1).describe()
        assert "secret" not in described and "***" in described and hosts in described


async def test_unreachable_cluster_and_sentinels_are_unavailable_fast() -> None:
    from tests.support.net import free_port

    for url in (
        f"redis+cluster://:pw@{LOOPBACK}:{free_port()},{LOOPBACK}:{free_port()}/",
        f"redis+sentinel://:pw@{LOOPBACK}:{free_port()}/svc/0",
    ):
        store = backend(url, 0.5)
        await test_store._assert_unavailable_quickly(store, 0.5)
        with pytest.raises(StoreUnavailable) as info:
            await store.ping()
        assert "pw@" not in str(info.value)
        await store.close()
