"""Who is calling: the identity every limit, cache scope and log line refers to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from knowctl.policy.priority import Priority

# key: a gateway key's user (or a trusted backend's owner:session); passthrough: a Google
# credential the gateway has seen succeed upstream; anonymous: a client address, which is
# also what a pass-through credential not yet seen to succeed counts as; internal: the
# gateway's own calls (topic refresh and prewarm).
IdentityKind = Literal["key", "passthrough", "anonymous", "internal"]


@dataclass(frozen=True, slots=True)
class Identity:
    """``user`` is what limits count against and the access log shows: a key's user, a
    verified credential's ``cred-`` name, or a client address. Each kind has its own store
    namespace, so names of different kinds never share windows."""

    user: str
    kind: IdentityKind
    tier: str | None = None
    max_priority: Priority | None = None
    # Answers cached for one caller are served to another only within the same scope; None:
    # this call is never served from the cache nor stored in it.
    cache_scope: str | None = None
    # The ``cred-`` name of the pass-through credential this call forwards (verified or not):
    # what an upstream success verifies. None when the caller's credential stays here.
    credential: str | None = None

    @property
    def caller(self) -> str | None:
        """One name per caller across kinds (fair shares of the quota wait queue); None for
        the gateway's own calls, which are bounded by the topics they serve."""
        if self.kind == "internal":
            return None
        return f"{self.kind}:{self.user}"
