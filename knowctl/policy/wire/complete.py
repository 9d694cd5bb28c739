"""Whether a kept answer is a complete success, on whichever surface it was given: the cache's
own check before it stores anything."""

from __future__ import annotations

from collections.abc import Sequence

from knowctl.policy.framing import is_complete_success
from knowctl.policy.wire import interactions, openai


def is_complete(chunks: Sequence[bytes], surface: str = "models") -> bool:
    if not chunks:
        return False
    if surface == "interactions":
        found = (
            interactions.read_interaction(chunks[0]) if len(chunks) == 1 else interactions.read_events(chunks)
        )
        return found is not None and found.complete
    if surface == "openai":
        summary = openai.summarize(chunks)
        return summary is not None and summary[0]
    return is_complete_success(chunks)
