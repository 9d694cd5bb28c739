"""Embeddings kept one text at a time (docs/architecture.md, the embedding walk).

A batch of a hundred texts of which ninety were embedded before sends only the ten new ones
upstream: each text's embedding is kept under everything that changes it (model, task type,
output dimensionality, title, the text, the caller's cache scope; policy in
knowctl.policy.embeddings), in this daemon's memory and in the shared store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from knowctl.daemon.cache import metrics as cm
from knowctl.daemon.lru import LRU
from knowctl.store import Health, Keys, StoreUnavailable, keys

log = logging.getLogger("knowctl.cache")


class ItemStore(Health, Keys, Protocol):
    """What the embedding items need of the store."""


@dataclass(frozen=True, slots=True)
class ItemsConfig:
    """What the embedding items need of the settings (knowctl.daemon.config.items_config)."""

    enabled: bool
    ttl_s: float
    local_max_entries: int
    local_max_bytes: int


class EmbeddingItemCache:
    def __init__(self, config: ItemsConfig, store: ItemStore) -> None:
        self.enabled = config.enabled
        self._ttl = config.ttl_s
        self._store = store
        self._local: LRU[bytes] = LRU(config.local_max_entries, config.local_max_bytes)

    async def get_many(self, item_keys: Sequence[str]) -> list[bytes | None]:
        found: list[bytes | None] = [self._local.get(key) for key in item_keys]
        missing = [i for i, value in enumerate(found) if value is None]
        if missing and self._store.available:
            try:
                # Side by side: the store client sends the gets of one loop turn together.
                got = await asyncio.gather(*(self._store.get(keys.embedding(item_keys[i])) for i in missing))
            except StoreUnavailable as exc:
                log.warning("cache: embedding lookups failed, embedding afresh: %s", exc)
                got = [None] * len(missing)
            for i, value in zip(missing, got, strict=True):
                if value is not None:
                    found[i] = value
                    self._local.put(item_keys[i], value, len(value), self._ttl)
        hits = sum(value is not None for value in found)
        cm.EMBEDDING_ITEMS_BY("hit").inc(hits)
        cm.EMBEDDING_ITEMS_BY("miss").inc(len(found) - hits)
        return found

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for key, value in items:
            self._local.put(key, value, len(value), self._ttl)
        if not items or not self._store.available:
            return
        try:
            await asyncio.gather(
                *(self._store.set(keys.embedding(key), value, self._ttl) for key, value in items)
            )
        except StoreUnavailable as exc:
            log.warning("cache: %d embeddings kept in this daemon only: %s", len(items), exc)
