"""What the model-call pipeline (``knowctl.daemon.pipeline``) asks of its components, in one place.

Each component lives in its own room and owns its state (the app wires their admin routes):

- callers (``daemon/callers``): who is calling, and per-user / per-IP limits;
- cache (``daemon/cache``): answers in two layers, stale copies, coalescing of identical calls;
- quota (``daemon/quota``): the provider's RPM/RPD/TPM/TPD windows, priority queue, back-off;
- interactions (``daemon/interactions``): who owns each interaction created through the gateway;
- the cache's embedding items (``daemon/cache/items``): one embedding per text, across calls.

The pipeline, in order: identify -> caller limits -> cache lookup -> (coalesce) -> quota
(admit now, else stale fallback, else queue, else 429) -> upstream -> settle quota with the
real usage -> save to cache. The dataclasses below are what passes between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from knowctl.daemon.context import CallContext, Ticket
from knowctl.policy.identity import Identity


class CallRefused(Exception):
    """Stop the call here and answer with this status, message and headers (Google's error shape).

    ``retry_after`` (seconds), when set, becomes a ``Retry-After`` header and a RetryInfo detail.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retry_after: float | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.headers = list(headers)


@dataclass(frozen=True, slots=True)
class Answer:
    """A model answer as chunks of GenerateContentResponse JSON (one chunk when not streamed).

    Kept framing-free so one stored answer replays as JSON, as SSE, or as a JSON-array stream.
    """

    chunks: tuple[bytes, ...]
    model_version: str | None = None
    surface: str = "models"  # the API surface it answers (its key names it too)


@dataclass(frozen=True, slots=True)
class Cached:
    """An answer found in a cache layer."""

    answer: Answer
    layer: str  # "L1", "L2" or "STALE"
    age_s: float  # seconds since it was stored (the Age header)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a look in the shared store found: the answer, or on a miss (usually) the
    coalescing lease, which the caller hands to the flight or gives back."""

    cached: Cached | None = None
    lease: bytes | None = None


class Flight(Protocol):
    """One coalesced call. The leader (``answer is None`` on entry) calls upstream and
    ``publish``es; followers find ``answer`` set when the leader finished (or time out)."""

    answer: Answer | None
    # Entering it waited for another call: anything reserved before is no longer fresh.
    waited: bool

    async def publish(self, answer: Answer | None) -> None: ...


class Callers(Protocol):
    async def identify(self, ctx: CallContext) -> Identity:
        """The caller of ``ctx``; raise CallRefused(401/403) for unknown or revoked keys."""
        ...

    async def check_limits(self, ctx: CallContext) -> None:
        """Count the call against the caller's limits; add RateLimit headers to
        ``ctx.response_headers``; raise CallRefused(429, retry_after=...) when over."""
        ...

    def upstream_answered(self, ctx: CallContext, status: int) -> None:
        """The upstream answered ``ctx``'s call (any call that went upstream, generation or
        forwarded) with this status: a success verifies a pass-through credential. No I/O."""
        ...


class ResponseCache(Protocol):
    shared: bool  # the answers live in a store other daemons share (lookups make I/O)

    def key_for(self, ctx: CallContext) -> str | None:
        """The cache key, or None when the call is not cacheable."""
        ...

    def lookup_local(self, key: str) -> Cached | None:
        """The answer in this daemon's own cache (L1): no I/O."""
        ...

    async def lookup_shared(self, key: str) -> Lookup:
        """The answer in the shared store (L2); on a miss, usually the coalescing lease too."""
        ...

    def release(self, key: str, lease: bytes) -> None:
        """Give back a lease that lookup_shared took when no flight follows."""
        ...

    async def stale(self, key: str) -> Cached | None: ...

    async def save(self, key: str, answer: Answer) -> None:
        """Store a complete, successful answer (the cache re-checks and refuses anything else)."""
        ...

    def flight(self, key: str, lease: bytes | None) -> AbstractAsyncContextManager[Flight]:
        """Coalesce identical misses; ``lease`` (from lookup_shared) is the flight's to keep."""
        ...


class QuotaGate(Protocol):
    @property
    def reserves_early(self) -> bool:
        """Whether ``reserve`` may run before the cache lookup's answer (it needs no
        upstream call of its own)."""
        ...

    async def reserve(self, ctx: CallContext) -> Ticket | float:
        """``try_admit`` without counting a decision: for a call that may not need the
        provider after all (a cache hit), which then gives the ticket back (``release``)."""
        ...

    async def try_admit(self, ctx: CallContext, reserved: Ticket | float | None = None) -> Ticket | float:
        """A ticket if quota admits the call now, else the seconds until it could;
        ``reserved``: what an earlier ``reserve`` of this call got, now counted. An admission
        names the deployment the call goes to on ``ctx.deployment``."""
        ...

    def release(self, ticket: Ticket) -> None:
        """Give back (in the background) a reservation no upstream call will use."""
        ...

    async def wait_admit(self, ctx: CallContext, retry_after: float) -> Ticket:
        """Queue by priority until admitted; raise CallRefused(429, retry_after=...) when the
        queue is full or the wait times out. Names the deployment on ``ctx.deployment``."""
        ...

    async def settle(self, ticket: Ticket, usage: dict[str, Any] | None) -> None:
        """Reconcile the reservation with the real usage (None: keep the reservation)."""
        ...

    async def reconcile(self, ticket: Ticket, usage: dict[str, Any]) -> None:
        """Correct a reservation settled without usage (a background interaction) once the
        usage is seen; idempotent, as long as the reservation is still in its windows."""
        ...

    def upstream_exhausted(
        self, model: str, retry_delay: float | None, deployment: str | None = None
    ) -> None:
        """The provider answered 429: hold the model (a ticket's ``model``, which names a
        pass-through credential's own quota too) at that deployment for retry_delay (or a
        back-off)."""
        ...

    def upstream_failed(self, model: str, deployment: str | None) -> None:
        """The deployment failed the call (a 5xx, unreachable, a timeout): take it out of the
        model's pool for a back-off, then let a call probe it again."""
        ...

    def alternatives(self, ctx: CallContext) -> bool:
        """Whether a deployment other than ``ctx.deployment`` may serve the call now."""
        ...

    def record_fallback(self, model: str) -> None:
        """Count a stale answer served because quota was gone."""
        ...


@dataclass(frozen=True, slots=True)
class Owned:
    """An interaction created through the gateway: its owner, and its conversation so far."""

    owner: str
    model: str
    tokens: int  # its last turn's input and output tokens: the next turn's history
    # The reservation of a turn that ran in the background, until its usage is seen.
    unsettled: Ticket | None = None


class Interactions(Protocol):
    async def find(self, interaction_id: str, owner: str) -> Owned | None:
        """The record if ``owner`` owns the interaction, else None; CallRefused(503) when
        ownership cannot be checked now."""
        ...

    async def remember(self, interaction_id: str, record: Owned) -> None: ...

    async def forget(self, interaction_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Held:
    """A resource created through the gateway (a file): who owns it, and the deployment that
    holds it (a file lives in one project: it is read, used and deleted there)."""

    owner: str
    deployment: str | None = None


@dataclass(frozen=True, slots=True)
class Upload:
    """A resumable upload in progress: its owner, the deployment it goes to, and the path and
    query (on that deployment) its chunks are sent to."""

    owner: str
    deployment: str | None
    target: str


class Resources(Protocol):
    """Who owns the resources created through the gateway, shared by every daemon."""

    async def find(self, name: str, owner: str) -> Held | None:
        """The record if ``owner`` owns ``name``, else None (unknown or another's: the same
        404); CallRefused(503) when ownership cannot be checked now."""
        ...

    async def owned(self, names: Sequence[str], owner: str) -> list[bool]:
        """For each name, whether ``owner`` owns it (one round trip per unknown name, at once)."""
        ...

    async def remember(self, name: str, held: Held, ttl_s: float) -> None: ...

    async def forget(self, name: str) -> None: ...

    async def open_upload(self, upload: Upload) -> str:
        """Record an upload in progress; its id, for the URL the client sends chunks to."""
        ...

    async def upload(self, upload_id: str, owner: str | None) -> Upload | None:
        """The upload if ``owner`` started it (None: whoever holds its id), else None;
        CallRefused(503) when it cannot be looked up now."""
        ...

    async def upload_allowance(self, owner: str, nbytes: int) -> float | None:
        """Count an upload chunk's bytes against its owner's day window: None when they fit,
        else the seconds until they would."""
        ...

    async def close_upload(self, upload_id: str) -> None: ...


class EmbeddingItems(Protocol):
    """Embeddings one text at a time, shared by every call that embeds the same text the
    same way (model, task type, dimensionality, title) within one cache scope."""

    enabled: bool

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Each key's embedding (its JSON as the provider gave it), or None: one round trip."""
        ...

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> None: ...
