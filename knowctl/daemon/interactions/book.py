"""Who owns each interaction created through the gateway, and how many tokens its
conversation holds (docs/architecture.md, resources per caller).

Google cannot tell the gateway's callers apart when the gateway calls it with its own
credential, so the gateway does: every interaction id it sees created is recorded with its
owner, and reading, cancelling, deleting or continuing it is for that owner alone. The
record also keeps the conversation's tokens so far (its last turn's input and output): the
next turn sends them again as server-side history, and its reservation must cover them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import orjson

from knowctl.daemon.context import Ticket
from knowctl.daemon.contracts import CallRefused, Owned
from knowctl.daemon.lru import LRU
from knowctl.store import Health, Keys, StoreUnavailable, keys

log = logging.getLogger("knowctl.interactions")

# Records this daemon keeps itself: what it recorded lately, served while the store is down.
LOCAL_RECORDS = 100_000
RECORD_BYTES = 256


class BookStore(Health, Keys, Protocol):
    """What the book needs of the store."""


@dataclass(frozen=True, slots=True)
class InteractionsConfig:
    """What the book needs of the settings (knowctl.daemon.config.interactions_config)."""

    ttl_s: float  # how long an interaction's owner is remembered


class InteractionBook:
    def __init__(self, config: InteractionsConfig, store: BookStore) -> None:
        self._ttl = config.ttl_s
        self._store = store
        self._local: LRU[Owned] = LRU(LOCAL_RECORDS, LOCAL_RECORDS * RECORD_BYTES)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def find(self, interaction_id: str, owner: str) -> Owned | None:
        """The record of ``interaction_id`` if ``owner`` owns it, else None (unknown, or
        someone else's: both answer the same 404). Raises CallRefused(503) when ownership
        cannot be checked: another tenant's interaction is never served on a guess."""
        record = self._local.get(interaction_id)
        if record is None:
            try:
                raw = await self._store.get(keys.interaction(interaction_id))
            except StoreUnavailable:
                raise CallRefused(
                    503,
                    "The gateway cannot check this interaction's owner now; retry shortly.",
                    retry_after=1,
                ) from None
            record = _decode(raw) if raw is not None else None
        if record is None or record.owner != owner:
            return None
        return record

    async def remember(self, interaction_id: str, record: Owned) -> None:
        self._local.put(interaction_id, record, RECORD_BYTES, self._ttl)
        try:
            await self._store.set(keys.interaction(interaction_id), _encode(record), self._ttl)
        except StoreUnavailable as exc:
            # Kept here meanwhile: the owner reaches it through this daemon until the store is back.
            log.warning("interactions: owner of %s kept locally only: %s", interaction_id, exc)

    async def forget(self, interaction_id: str) -> None:
        self._local.pop(interaction_id)
        try:
            await self._store.delete(keys.interaction(interaction_id))
        except StoreUnavailable as exc:
            log.warning(
                "interactions: %s deleted, its record stays until it expires: %s", interaction_id, exc
            )


def _encode(record: Owned) -> bytes:
    fields: dict[str, object] = {"o": record.owner, "m": record.model, "t": record.tokens}
    ticket = record.unsettled
    if ticket is not None:
        fields["u"] = [
            ticket.model,
            ticket.reservation_id,
            ticket.estimated_tokens,
            ticket.requests,
            ticket.data,
            ticket.deployment,
            ticket.lane,
        ]
    return orjson.dumps(fields)


def _decode(raw: bytes) -> Owned | None:
    try:
        found = orjson.loads(raw)
        unsettled = None
        if "u" in found:
            model, reservation_id, estimated, requests, data, *rest = found["u"]
            # Records of before pools name neither deployment nor lane.
            deployment = str(rest[0]) if rest and rest[0] is not None else None
            lane = str(rest[1]) if len(rest) > 1 and rest[1] is not None else None
            unsettled = Ticket(
                str(model), str(reservation_id), int(estimated), dict(data), int(requests), deployment, lane
            )
        return Owned(str(found["o"]), str(found["m"]), int(found["t"]), unsettled)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
