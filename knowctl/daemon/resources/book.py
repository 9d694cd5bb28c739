"""Who owns each resource created through the gateway (files so far), and each resumable
upload in progress (docs/architecture.md, "Resources per caller").

Google sees one credential when the gateway holds it, so it cannot tell the gateway's
callers apart: the gateway records the owner of every file it sees created, with the
deployment that holds it, and answers 404 to anyone else before calling Google. Upload
sessions are records too, so a chunk may reach any daemon. Records live in the store,
shared by every daemon, and in a small local LRU that also serves while the store is down.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from knowctl.daemon.contracts import CallRefused, Held, Upload
from knowctl.daemon.ids import unique_id
from knowctl.daemon.lru import LRU
from knowctl.policy.windows import Window
from knowctl.store import Health, Keys, StoreUnavailable, Windows, keys

log = logging.getLogger("knowctl.resources")

LOCAL_RECORDS = 100_000
UPLOAD_WINDOW_S = 86400.0  # the upload byte limit's window: any 24 hours
RECORD_BYTES = 256


class BookStore(Health, Keys, Windows, Protocol):
    """What the book needs of the store."""


@dataclass(frozen=True, slots=True)
class ResourcesConfig:
    """What the book needs of the settings (knowctl.daemon.config.resources_config)."""

    upload_ttl_s: float  # how long an upload may stay unfinished (Google's URLs last a week)
    upload_bytes_per_day: int = 0  # one caller's upload bytes in any 24 hours (0: no limit)


def _unreachable() -> CallRefused:
    return CallRefused(
        503, "The gateway cannot check this resource's owner now; retry shortly.", retry_after=1
    )


class ResourceBook:
    """The Resources of knowctl.daemon.contracts."""

    def __init__(self, config: ResourcesConfig, store: BookStore) -> None:
        self._config = config
        self._store = store
        self._local: LRU[Held] = LRU(LOCAL_RECORDS, LOCAL_RECORDS * RECORD_BYTES)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def _held(self, name: str) -> Held | None:
        held = self._local.get(name)
        if held is not None:
            return held
        try:
            raw = await self._store.get(keys.resource(name))
        except StoreUnavailable:
            raise _unreachable() from None
        return _decode_held(raw) if raw is not None else None

    async def find(self, name: str, owner: str) -> Held | None:
        held = await self._held(name)
        return held if held is not None and held.owner == owner else None

    async def owned(self, names: Sequence[str], owner: str) -> list[bool]:
        found = await asyncio.gather(*(self._held(name) for name in names))
        return [held is not None and held.owner == owner for held in found]

    async def remember(self, name: str, held: Held, ttl_s: float) -> None:
        self._local.put(name, held, RECORD_BYTES, ttl_s)
        try:
            await self._store.set(keys.resource(name), orjson.dumps([held.owner, held.deployment]), ttl_s)
        except StoreUnavailable as exc:
            log.warning("resources: owner of %s kept locally only: %s", name, exc)

    async def forget(self, name: str) -> None:
        self._local.pop(name)
        try:
            await self._store.delete(keys.resource(name))
        except StoreUnavailable as exc:
            log.warning("resources: %s deleted, its record stays until it expires: %s", name, exc)

    # --- uploads ----------------------------------------------------------------------------------
    async def open_upload(self, upload: Upload) -> str:
        # Unguessable: the id is in a URL a client may log, but only its owner may use it.
        upload_id = secrets.token_urlsafe(24)
        record = orjson.dumps([upload.owner, upload.deployment, upload.target])
        try:
            await self._store.set(keys.upload_session(upload_id), record, self._config.upload_ttl_s)
        except StoreUnavailable:
            # Kept nowhere else: a chunk could reach another daemon that cannot find it.
            raise CallRefused(
                503, "The gateway cannot start an upload now; retry shortly.", retry_after=1
            ) from None
        return upload_id

    async def upload(self, upload_id: str, owner: str | None) -> Upload | None:
        try:
            raw = await self._store.get(keys.upload_session(upload_id))
        except StoreUnavailable:
            raise CallRefused(
                503, "The gateway cannot find this upload now; retry shortly.", retry_after=1
            ) from None
        if raw is None:
            return None
        try:
            found_owner, deployment, target = orjson.loads(raw)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return None
        if owner is not None and found_owner != owner:
            return None
        return Upload(str(found_owner), None if deployment is None else str(deployment), str(target))

    async def upload_allowance(self, owner: str, nbytes: int) -> float | None:
        """Count ``nbytes`` more of ``owner``'s uploads in its day window: None when they fit,
        else the seconds until they would. While the store is down uploads pass uncounted:
        they spend no provider quota, and refusing them all would stop every upload."""
        limit = self._config.upload_bytes_per_day
        if not limit or not nbytes:
            return None
        window = Window("upload_bytes", UPLOAD_WINDOW_S, limit)
        try:
            admission = await self._store.acquire(
                keys.upload_scope(owner), [window], [nbytes], reservation_id=unique_id()
            )
        except StoreUnavailable as exc:
            log.warning("resources: an upload chunk passed uncounted: %s", exc)
            return None
        return None if admission.admitted else admission.retry_after

    async def close_upload(self, upload_id: str) -> None:
        try:
            await self._store.delete(keys.upload_session(upload_id))
        except StoreUnavailable as exc:
            log.warning("resources: finished upload's record stays until it expires: %s", exc)


def _decode_held(raw: bytes) -> Held | None:
    try:
        owner, deployment = orjson.loads(raw)
        return Held(str(owner), None if deployment is None else str(deployment))
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return None
