"""The batch jobs and long-running operations the simulator remembers: bounded books, oldest
dropped first, whose records move on by the clock alone.

Pure code with the time passed in. A record is stored with the instants at which it starts
running and is done, and its state is read from the time: no task runs in the background, and
a job left alone is as finished as one polled. What a job answers is worked out when it is made
(the simulator's answers are deterministic, so nothing is lost by answering early) and shown
only once it is done. Finishing has effects the books leave to their owner (a responses file
or a video in the file store, a count): :meth:`JobBook.settle` hands back the records that
have finished since it was last asked, once each.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any, Generic, TypeVar

PENDING, RUNNING, SUCCEEDED, CANCELLED = "PENDING", "RUNNING", "SUCCEEDED", "CANCELLED"
GENERATE, EMBED, PREDICTION = "generate", "embed", "prediction"  # what a batch runs
DEFAULT_CAPACITY = 10_000

_seq = count(1)


@dataclass(slots=True)
class StoredBatch:
    """One batch: a Gemini API batch (``batches/{id}``, of GENERATE or EMBED requests) or a
    Vertex AI batch prediction job (``projects/{p}/locations/{l}/batchPredictionJobs/{id}``)."""

    id: str
    scope: str  # "" on the Gemini API, "projects/{p}/locations/{l}" on Vertex
    kind: str  # GENERATE, EMBED or PREDICTION
    model: str  # as Google names it back ("models/m", "publishers/google/models/m")
    display_name: str | None
    created: float
    starts: float  # when it is RUNNING
    due: float  # when it has SUCCEEDED
    request_count: int
    failed_count: int = 0
    inlined: list[dict[str, Any]] | None = None  # inline input: each request's InlinedResponse
    responses: bytes | None = None  # file input: the responses JSONL, stored as a file when done
    responses_file: str | None = None  # "files/batch-{id}", once stored
    input_config: dict[str, Any] | None = None  # Vertex: answered back as sent
    output_config: dict[str, Any] | None = None
    cancelled: float | None = None
    seq: int = field(default_factory=lambda: next(_seq))

    @property
    def name(self) -> str:
        return f"{self.scope}/batchPredictionJobs/{self.id}" if self.scope else f"batches/{self.id}"

    def state(self, now: float) -> str:
        if self.cancelled is not None:
            return CANCELLED
        if now >= self.due:
            return SUCCEEDED
        return RUNNING if now >= self.starts else PENDING

    def finished(self, now: float) -> bool:
        return self.state(now) in (SUCCEEDED, CANCELLED)

    def ended(self, now: float) -> float | None:
        """When it succeeded or was cancelled; None while it is pending or running."""
        if self.cancelled is not None:
            return self.cancelled
        return self.due if now >= self.due else None

    def updated(self, now: float) -> float:
        """Its last change of state."""
        ended = self.ended(now)
        if ended is not None:
            return ended
        return self.starts if now >= self.starts else self.created


@dataclass(slots=True)
class StoredOperation:
    """One long-running video generation: Veo's ``predictLongRunning``."""

    name: str  # as answered: "models/{m}/operations/{id}", or under a Vertex project / publisher
    model: str
    vertex: bool  # Vertex AI (or express) shapes rather than the Gemini API's
    created: float
    due: float
    videos: list[bytes]  # what it generated (none when the prompt was filtered)
    filtered: str | None = None  # why the prompt's videos were withheld (RAI filtering)
    storage_uri: str | None = None  # Vertex ``storageUri``: the videos are reported there
    video_files: list[str] = field(default_factory=list)  # Gemini API: their file ids, once done
    seq: int = field(default_factory=lambda: next(_seq))

    def done(self, now: float) -> bool:
        return now >= self.due


T = TypeVar("T", StoredBatch, StoredOperation)


class JobBook(Generic[T]):
    """The last ``capacity`` records by name, with those not yet settled kept apart so that a
    settle costs only the open ones."""

    def __init__(self, key: Callable[[T], str], capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._key: Callable[[T], str] = key
        self._records: OrderedDict[str, T] = OrderedDict()
        self._open: dict[str, T] = {}

    def __len__(self) -> int:
        return len(self._records)

    def clear(self) -> None:
        self._records.clear()
        self._open.clear()

    def put(self, record: T) -> None:
        name = self._key(record)
        self._records[name] = record
        self._open[name] = record
        while len(self._records) > self.capacity:
            gone, _ = self._records.popitem(last=False)
            self._open.pop(gone, None)

    def has(self, name: str) -> bool:
        return name in self._records

    def get(self, name: str) -> T | None:
        return self._records.get(name)

    def delete(self, name: str) -> bool:
        self._open.pop(name, None)
        return self._records.pop(name, None) is not None

    def settle(self, done: Callable[[T], bool]) -> list[T]:
        """The open records for which ``done`` is true now, each handed back once."""
        finished = [record for record in self._open.values() if done(record)]
        for record in finished:
            del self._open[self._key(record)]
        return finished

    def newest_first(self, keep: Callable[[T], bool]) -> list[T]:
        return sorted((r for r in self._records.values() if keep(r)), key=lambda r: r.seq, reverse=True)
