"""``redis+cluster://``: the Redis store over a Redis Cluster.

Everything a Cluster changes for knowctl is here; the rest (scripts, timeouts, error
mapping) is RedisStore's:

- Lua scripts need nothing: every script's keys carry one hash tag (knowctl.store.keys),
  so EVALSHA is routed to the slot's primary, and a NOSCRIPT there makes redis-py send
  SCRIPT LOAD to every primary before running it again.
- SCAN walks one node's keyspace, so a scan visits every primary in turn; the cursor
  carries the node's position along with that node's own cursor.
- A multi-key UNLINK must stay within one slot: keys are grouped by slot first.
- PUBLISH on any node reaches subscribers on every node (the cluster bus broadcasts it),
  so a subscription may sit on any node: the channel's own slot owner first, then the
  other primaries, whichever accepts it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import SlotNotCoveredError

from knowctl.store import keys
from knowctl.store.redis.clients import DEFAULT_MAX_CONNECTIONS
from knowctl.store.redis.store import KEY_BATCH, RedisStore

T = TypeVar("T")

# The low bits of a scan cursor hold the primary's index; the rest is that node's cursor.
_NODE_BITS = 10
_NODE_MASK = (1 << _NODE_BITS) - 1


def encode_cursor(node_index: int, node_cursor: int) -> int:
    return (node_cursor << _NODE_BITS) | node_index


def decode_cursor(cursor: int) -> tuple[int, int]:
    return cursor & _NODE_MASK, cursor >> _NODE_BITS


def _tag_is_literal(match: str) -> bool:
    """Whether every key matching ``match`` has the same hash tag (so lives on one slot):
    the pattern has a tag and no glob character up to the tag's closing brace."""
    tag = keys.hash_tag(match)
    if tag is None:
        return False
    end = match.index("}", match.index("{") + 1)
    return not any(c in "*?" for c in match[: end + 1])


class RedisClusterStore(RedisStore):
    _client: RedisCluster
    # Store calls running at once (made on first use); the node pools hold a few more
    # connections, for subscriptions, which keep theirs (knowctl.store.redis.clients).
    _semaphore: asyncio.Semaphore | None = None

    async def _call(self, op: str, make: Callable[[], Awaitable[T]]) -> T:
        async def ready_then_make() -> T:
            # RedisCluster's per-node pools refuse a connection past their cap at once
            # (MaxConnectionsError) where the single-server pool waits for a free one; a
            # burst on one hot slot would fail. Waiting here, within the same timeout, gives
            # the cluster the same behaviour. A call uses at most one connection per node.
            async with self._in_flight():
                # Read the topology before any command: until it is known (first use, or
                # after redis-py dropped it on CLUSTERDOWN or repeated MOVED), redis-py 8
                # sends keyed commands to a random primary; the MOVED replies then pile up
                # until it closes every connection, failing the other calls in flight.
                # initialize() returns at once when the topology is known.
                await self._client.initialize()
                return await make()

        return await super()._call(op, ready_then_make)

    def _in_flight(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(DEFAULT_MAX_CONNECTIONS)
        return self._semaphore

    async def _nodes(self) -> list[ClusterNode]:
        # initialize() reads the topology only when it is unknown or marked stale (after a
        # connection error); otherwise it returns at once.
        await self._client.initialize()
        return sorted(self._client.get_primaries(), key=lambda node: node.name)

    async def _scan(self, match: str, cursor: int, count: int) -> tuple[int, list[Any]]:
        if _tag_is_literal(match):
            await self._client.initialize()
            node = self._client.get_node_from_key(match)
            assert node is not None
            nodes = [node]
        else:
            nodes = await self._nodes()
        index, node_cursor = decode_cursor(cursor)
        if index >= len(nodes):
            # The cluster lost a primary mid-scan: nothing left to visit.
            return 0, []
        node = nodes[index]
        # With target_nodes, SCAN answers ({node name: next cursor}, keys).
        raw: Any = await self._client.scan(cursor=node_cursor, match=match, count=count, target_nodes=node)
        cursors, found = raw
        next_node_cursor = int(cursors[node.name])
        if next_node_cursor != 0:
            return encode_cursor(index, next_node_cursor), list(found)
        if index + 1 < len(nodes):
            return encode_cursor(index + 1, 0), list(found)
        return 0, list(found)

    def _key_batches(self, names: Sequence[str]) -> list[Sequence[str]]:
        by_slot: dict[int, list[str]] = defaultdict(list)
        for name in names:
            by_slot[key_slot(name.encode())].append(name)
        return [
            group[start : start + KEY_BATCH]
            for group in by_slot.values()
            for start in range(0, len(group), KEY_BATCH)
        ]

    async def _pubsub_candidates(self, channel: str) -> list[Callable[[], PubSub]]:
        nodes = await self._nodes()
        try:
            owner = self._client.get_node_from_key(channel)
        except SlotNotCoveredError:  # its primary failed: any other node will do
            owner = None
        ordered = ([owner] if owner is not None else []) + [n for n in nodes if n != owner]

        def opener(node: ClusterNode) -> Callable[[], PubSub]:
            return lambda: self._client.pubsub(node=node)

        return [opener(node) for node in ordered]
