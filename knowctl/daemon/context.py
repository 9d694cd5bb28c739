"""One model call as the pipeline sees it, parsed once and passed to every component."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from knowctl.net.asgi import Scope
from knowctl.policy.identity import Identity
from knowctl.policy.paths import ApiCall
from knowctl.policy.priority import Priority


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
    body: bytes = b""
    payload: dict[str, Any] | None = None  # the parsed JSON body of a known action
    identity: Identity | None = None
    priority: Priority = Priority.MEDIUM
    # Response headers every answer to this call carries (RateLimit, X-Knowctl-Cache...).
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def streaming(self) -> bool:
        return self.call.action == "streamGenerateContent"

    @property
    def sse(self) -> bool:
        return "alt=sse" in self.query
