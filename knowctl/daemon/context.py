"""One model call as the pipeline sees it, parsed once and passed to every component, and the
notes one request leaves for its access log line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from knowctl.net.asgi import Scope
from knowctl.policy.identity import Identity
from knowctl.policy.paths import ApiCall, Surface
from knowctl.policy.priority import Priority

# The one key the daemon keeps in an ASGI scope: the request's notes. A scope is built by the
# server (or by the daemon itself, for its own calls), never from client input.
SCOPE_NOTES = "knowctl.notes"


@dataclass(slots=True)
class CallNotes:
    """What one request came to, written by the pipeline as it decides and read by the access
    log; and how the daemon marks the calls it makes itself."""

    request_id: str | None = None  # set on first use (knowctl.daemon.access_log.request_id)
    user: str | None = None
    cache: str | None = None  # HIT-L1, MISS, BYPASS, STALE...
    quota: str | None = None  # admitted, queued, refused, fallback
    topic: str | None = None  # a call the topic API made for this topic (shares its answers)
    internal: str | None = None  # the gateway's own call (topic refresh, prewarm), by its maker


def notes_of(scope: Scope) -> CallNotes:
    """The request's notes, made on first use."""
    notes: CallNotes | None = scope.get(SCOPE_NOTES)
    if notes is None:
        notes = scope[SCOPE_NOTES] = CallNotes()
    return notes


@dataclass(slots=True)
class Ticket:
    """Quota reserved for one upstream call; settled once the real usage is known."""

    model: str
    reservation_id: str
    estimated_tokens: int
    data: dict[str, Any] = field(default_factory=dict)  # the quota component's own bookkeeping
    requests: int = 1  # what it counts in request windows
    deployment: str | None = None  # where the call goes: the deployment that admitted it
    lane: str | None = None  # the quota's own name of where it counts (a deployment's tier)


@dataclass(slots=True)
class CallContext:
    scope: Scope
    call: ApiCall
    method: str
    raw_path: str  # as sent, still percent-encoded
    query: str
    headers: list[tuple[str, str]]  # lower-case names, in order
    header: dict[str, str]  # the same, by name (last wins)
    client_ip: str  # the direct peer; see Callers for X-Forwarded-For
    notes: CallNotes = field(default_factory=CallNotes)  # the request's: notes_of(scope)
    body: bytes = b""
    payload: dict[str, Any] | None = None  # the parsed JSON body of a known action
    identity: Identity | None = None
    priority: Priority = Priority.MEDIUM
    # Response headers every answer to this call carries (RateLimit, X-Knowctl-Cache...).
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # What the call counts in the provider's request windows (a batch of N embeddings: N).
    requests: int = 1
    # Tokens of server-side history the call carries as input (an interaction's earlier turns).
    history_tokens: int = 0
    # An embedding call's texts that go upstream (the provider's token estimate counts them).
    input_texts: list[str] | None = None
    # What the answer reported of itself (an Interaction's id, status and usage), once known.
    reported: Any = None
    # The reservation of an answer that reported no usage (a background interaction still
    # running): reconciled later by whoever sees its usage.
    unsettled: Ticket | None = None
    # The upstream deployment the quota admitted the call at (None: the first that serves it).
    deployment: str | None = None

    @property
    def streaming(self) -> bool:
        if self.call.surface is Surface.MODELS:
            return self.call.action == "streamGenerateContent"
        return self.payload is not None and self.payload.get("stream") is True

    @property
    def sse(self) -> bool:
        # Interactions and OpenAI streams are always Server-Sent Events.
        return "alt=sse" in self.query or self.call.surface is not Surface.MODELS
