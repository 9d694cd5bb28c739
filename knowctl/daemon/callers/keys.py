"""Gateway keys in the store, and this daemon's cache of key lookups.

The store holds ``key id -> record`` and ``SHA-256(key) -> key id`` (never a key). Lookups
are cached for a few seconds so the hot path pays no store round trip per request; a
revocation is announced on the store's pub/sub channel and every daemon drops the key at
once (within about a second), the cache TTL bounding it when a message is lost. While the
store is down a key this daemon has seen before is judged by its last known record.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import orjson

from knowctl.daemon.channel import ChannelListener
from knowctl.policy import callers as policy
from knowctl.policy.callers import KeyRecord
from knowctl.store import Notifications, Records, StoreUnavailable, keys

log = logging.getLogger("knowctl.callers")

CACHE_TTL_S = 5.0  # a valid key is re-read from the store this often
NEGATIVE_TTL_S = 1.0  # an unknown key: short, a key created on another daemon works at once
CACHE_MAX = 10_000
KNOWN_MAX = 10_000  # last known records kept for store outages


class KeyBookStore(Records, Notifications, Protocol):
    """What the key book needs of the store: the key records, and news of changes."""


class KeyBook:
    def __init__(
        self,
        store: KeyBookStore,
        *,
        store_usable: Callable[[], bool],
        store_failed: Callable[[StoreUnavailable], None],
    ) -> None:
        self._store = store
        self._store_usable = store_usable
        self._store_failed = store_failed
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}  # digest -> (record, until)
        self._known: OrderedDict[str, KeyRecord] = OrderedDict()
        # Bumped on every invalidation: a lookup that started before one must not cache
        # what it read, which may predate the revocation.
        self._generation = 0
        self._id = uuid.uuid4().hex
        self._listener = ChannelListener(
            store, keys.keys_channel(), self._dispatch, self._on_subscribed, name="callers-keys"
        )

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self, wait_s: float) -> None:
        """Listen for key changes; return once subscribed or after ``wait_s`` (store down)."""
        await self._listener.start(wait_s)

    async def close(self) -> None:
        await self._listener.close()

    # --- lookups ------------------------------------------------------------------------------
    async def lookup(self, digest: str) -> KeyRecord | None:
        """The record of the key with this digest, None if unknown. StoreUnavailable only
        when the store is down and this daemon has never seen the key."""
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        if not self._store_usable():
            return self._last_known(digest, StoreUnavailable("the store is unavailable"))
        generation = self._generation
        try:
            record = await self._fetch(digest)
        except StoreUnavailable as exc:
            self._store_failed(exc)
            return self._last_known(digest, exc)
        if generation == self._generation:
            self._remember(digest, record, now)
        return record

    def _last_known(self, digest: str, exc: StoreUnavailable) -> KeyRecord:
        known = self._known.get(digest)
        if known is None:
            raise exc
        return known

    async def _fetch(self, digest: str) -> KeyRecord | None:
        key_id = await self._store.hash_get(keys.key_lookup(), digest)
        if key_id is None:
            return None
        raw = await self._store.hash_get(keys.key_records(), key_id.decode())
        if raw is None:
            return None  # a lookup whose record was never written: the create failed
        try:
            return KeyRecord.from_json(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("callers: key record %s is unreadable; treating the key as unknown", key_id)
            return None

    def _remember(self, digest: str, record: KeyRecord | None, now: float) -> None:
        if len(self._cache) >= CACHE_MAX:
            self._cache = {d: e for d, e in self._cache.items() if e[1] > now}
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
        self._cache[digest] = (record, now + (CACHE_TTL_S if record is not None else NEGATIVE_TTL_S))
        if record is not None:
            self._known[digest] = record
            self._known.move_to_end(digest)
            while len(self._known) > KNOWN_MAX:
                self._known.popitem(last=False)

    # --- admin operations ---------------------------------------------------------------------
    async def create(
        self, user: str, tier: str | None, max_priority: str | None, trusted: bool
    ) -> tuple[str, KeyRecord]:
        """A new key and its record; the key itself exists only in the return value."""
        key = policy.make_key(secrets.token_bytes(policy.KEY_BYTES))
        key_id = policy.make_key_id(secrets.token_bytes(policy.KEY_ID_BYTES))
        while await self._store.hash_get(keys.key_records(), key_id) is not None:
            key_id = policy.make_key_id(secrets.token_bytes(policy.KEY_ID_BYTES))
        record = KeyRecord(key_id, user, tier, max_priority, trusted, created=time.time())
        # Lookup first: if the second write fails, the key never worked and is never listed.
        await self._store.hash_set(keys.key_lookup(), policy.digest(key), key_id.encode())
        await self._store.hash_set(keys.key_records(), key_id, record.to_json())
        await self._announce({"t": "created"})
        self._forget_unknown()
        return key, record

    async def records(self) -> list[KeyRecord]:
        raw = await self._store.hash_get_all(keys.key_records())
        found = []
        for key_id, value in raw.items():
            try:
                found.append(KeyRecord.from_json(value))
            except (ValueError, KeyError, TypeError):
                log.warning("callers: key record %s is unreadable; not listed", key_id)
        return sorted(found, key=lambda r: (r.created, r.key_id))

    async def get(self, key_id: str) -> KeyRecord | None:
        raw = await self._store.hash_get(keys.key_records(), key_id)
        return KeyRecord.from_json(raw) if raw is not None else None

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Mark a key revoked (kept, so its callers get 403 rather than 401); None if unknown."""
        record = await self.get(key_id)
        if record is None:
            return None
        if record.revoked is None:
            record = replace(record, revoked=time.time())
            await self._store.hash_set(keys.key_records(), key_id, record.to_json())
        self._forget_key(key_id, record.revoked)
        await self._announce({"t": "revoked", "k": key_id, "at": record.revoked})
        return record

    # --- invalidation -------------------------------------------------------------------------
    def _forget_key(self, key_id: str, revoked_at: float | None) -> None:
        self._generation += 1
        for digest, (record, _) in list(self._cache.items()):
            if record is not None and record.key_id == key_id:
                del self._cache[digest]
        for digest, record in list(self._known.items()):
            if record.key_id == key_id and revoked_at is not None:
                self._known[digest] = replace(record, revoked=revoked_at)

    def _forget_unknown(self) -> None:
        self._generation += 1
        self._cache = {d: e for d, e in self._cache.items() if e[0] is not None}

    async def _announce(self, message: dict[str, object]) -> None:
        try:
            await self._store.publish(keys.keys_channel(), orjson.dumps({**message, "from": self._id}))
        except StoreUnavailable as exc:
            # The change is in the store; other daemons see it when their cache entry expires.
            log.warning("callers: could not announce a key change: %s", exc)

    def _on_subscribed(self, resumed: bool) -> None:
        # Messages sent while unsubscribed are lost: re-read everything.
        self._generation += 1
        self._cache.clear()

    def _dispatch(self, raw: bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if not isinstance(message, dict) or message.get("from") == self._id:
            return
        if message.get("t") == "revoked" and isinstance(message.get("k"), str):
            at = message.get("at")
            self._forget_key(message["k"], float(at) if isinstance(at, int | float) else time.time())
        elif message.get("t") == "created":
            self._forget_unknown()
