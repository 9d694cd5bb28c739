"""Who is calling: the identity every limit, cache scope and log line refers to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from knowctl.policy.priority import Priority

IdentityKind = Literal["key", "passthrough", "anonymous"]


@dataclass(frozen=True, slots=True)
class Identity:
    """``user`` is what limits count against: a key's user, a credential hash, or an IP."""

    user: str
    kind: IdentityKind
    tier: str | None = None
    max_priority: Priority | None = None
    # Answers cached for one caller are served to another only within the same scope.
    cache_scope: str = "shared"
