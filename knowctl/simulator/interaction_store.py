"""The interactions the simulator remembers: a bounded book of records, oldest dropped first.

Pure code with the clock passed in. A background interaction is stored ``in_progress`` with
the instant it becomes ``completed`` (``ready_at``); reads settle it lazily, so no task runs
in the background and a test clock can move it on.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from knowctl.policy.wire.interactions import COMPLETED, FINAL_STATUSES

IN_PROGRESS = "in_progress"
CANCELLED = "cancelled"
DEFAULT_CAPACITY = 10_000


def new_id() -> str:
    """A unique interaction id in Google's style (``v1_`` and an opaque token)."""
    return "v1_" + secrets.token_urlsafe(24)


def iso_now() -> str:
    """Wall-clock time as the Interactions API writes it (YYYY-MM-DDThh:mm:ssZ)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(slots=True)
class Record:
    """One interaction: who answered it, what it was asked, its answer and its state."""

    id: str
    kind: str  # "model" or "agent"
    name: str
    input_texts: list[str]
    text: str
    input_tokens: int  # this turn's prompt plus the history's input and output
    output_tokens: int
    status: str
    ready_at: float  # clock instant at which an in-progress interaction completes
    previous_id: str | None = None
    created: str = field(default_factory=iso_now)
    updated: str = ""

    def settle(self, now: float) -> None:
        """Complete a background run whose time has come."""
        if self.status == IN_PROGRESS and now >= self.ready_at:
            self.status = COMPLETED
            self.updated = iso_now()

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


class InteractionBook:
    """The last ``capacity`` stored interactions by id."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._records: OrderedDict[str, Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def put(self, record: Record) -> None:
        self._records[record.id] = record
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)

    def get(self, interaction_id: str, now: float) -> Record | None:
        record = self._records.get(interaction_id)
        if record is not None:
            record.settle(now)
        return record

    def delete(self, interaction_id: str) -> bool:
        return self._records.pop(interaction_id, None) is not None

    def clear(self) -> None:
        self._records.clear()
