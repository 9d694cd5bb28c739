"""The simulator's run-time state: its knobs, counters, quota and pending faults, and their changes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from knowctl.simulator import answers
from knowctl.simulator.cache_store import CacheBook
from knowctl.simulator.catalogue import MODEL_METHODS, MODELS, check_models, supported_methods
from knowctl.simulator.file_store import FileBook
from knowctl.simulator.interaction_store import InteractionBook
from knowctl.simulator.job_store import JobBook, StoredBatch, StoredOperation
from knowctl.simulator.quota import SlidingWindowQuota

FAULTS = ("error500", "reset", "cut_stream", "invalid_json", "hang", "denied", "bad_key")


@dataclass(slots=True)
class SimulatorConfig:
    """Run-time knobs; ``rpm``/``tpm`` of 0 mean unlimited."""

    latency_ms: float = 0.0
    rpm: int = 0
    tpm: int = 0
    window_s: float = 60.0
    chunk_delay_ms: float = 0.0
    chunks: int = answers.DEFAULT_CHUNKS
    max_body_bytes: int = 32 * 1024 * 1024
    models: tuple[str, ...] = MODELS
    any_model: bool = False
    background_ms: float = 300.0  # how long a background interaction runs before it completes
    # Serve calls that ask for the priority tier at standard, as Google does past the priority
    # limit (saying so in x-gemini-service-tier).
    downgrade_priority: bool = False
    # The fewest tokens a context cache may hold: Google refuses smaller ones (its minimum is
    # per model, 1024 to 4096); 0, the default, lets tests make small caches.
    cache_min_tokens: int = 0
    # How long a batch job runs: PENDING for the first half, RUNNING for the second, then
    # SUCCEEDED with its results (Google takes minutes to hours).
    batch_ms: float = 300.0
    # How long a long-running operation (a Veo video) runs before it is done.
    operation_ms: float = 300.0


@dataclass(slots=True)
class Counters:
    """What the simulator has answered since it started or was last reset."""

    served: int = 0
    rejected: int = 0
    streams: int = 0
    count_tokens: int = 0
    other: int = 0
    listings: int = 0
    bad_requests: int = 0
    faults: int = 0
    not_found: int = 0
    prompt_tokens: int = 0
    candidates_tokens: int = 0
    interactions: int = 0  # interactions created (model and agent)
    interaction_accesses: int = 0  # gets, resumes, cancels and deletes of one interaction
    openai_chats: int = 0  # OpenAI-compatible chat completions answered
    embedded_items: int = 0  # texts embedded (a batch of N counts N), on every surface
    uploads_started: int = 0  # resumable upload sessions opened
    uploads_finished: int = 0  # uploads finalized into a file
    upload_bytes: int = 0  # chunk bytes received, cut-short chunks' included
    files_listed: int = 0  # files.list pages answered
    files_deleted: int = 0
    caches_created: int = 0  # context caches (cachedContents) created
    caches_updated: int = 0
    caches_deleted: int = 0
    cached_content_tokens: int = 0  # prompt tokens that served generation calls came from caches
    batches_created: int = 0  # Gemini API batches (generate and embed) and Vertex batch jobs
    batches_succeeded: int = 0  # counted when their time comes, polled or not
    batches_cancelled: int = 0  # cancels of a batch still pending or running
    batches_deleted: int = 0
    batch_requests: int = 0  # the requests of Gemini API batches, answered (errors too)
    operations_started: int = 0  # long-running operations (predictLongRunning) started
    operations_polled: int = 0  # gets and fetchPredictOperation calls on a known operation


class SimulatorState:
    """Everything one simulator instance remembers; the handlers read and update it."""

    def __init__(self, config: SimulatorConfig | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = replace(config) if config is not None else SimulatorConfig()
        self.clock = clock
        self.quota = SlidingWindowQuota(self.config.rpm, self.config.tpm, self.config.window_s)
        self.counters = Counters()
        self.by_model: dict[str, int] = {}
        self.by_tier: dict[str, int] = {}  # generation calls by the service tier they asked for
        self.live_counts: dict[str, int] = {}  # Live API sessions and turns (live.py)
        self.fault: str | None = None
        self.fault_count = 0
        self.interaction_book = InteractionBook()
        self.files = FileBook()
        self.caches = CacheBook()
        self.batches: JobBook[StoredBatch] = JobBook(lambda b: b.name)
        self.operations: JobBook[StoredOperation] = JobBook(lambda o: o.name)

    def serves(self, model: str, method: str | None) -> bool:
        """Whether a call of ``method`` (None: a GET of the model) on ``model`` is answered."""
        if self.config.any_model:
            return True
        if model not in self.config.models:
            return False
        return method is None or method in supported_methods(model) or method not in MODEL_METHODS

    def take_fault(self) -> str | None:
        """The fault the next generate/stream call fails with, counting it off; None: no fault."""
        if self.fault is None:
            return None
        fault = self.fault
        self.fault_count -= 1
        if self.fault_count <= 0:
            self.fault, self.fault_count = None, 0
        self.counters.faults += 1
        return fault

    def settle_jobs(self, now: float) -> None:
        """Finish the batches and operations whose time has come: count the batches, and store
        what they made as GENERATED files (a file-input batch's responses, named
        ``batch-{id}`` as Google names them; a Gemini API video)."""
        for batch in self.batches.settle(lambda b: b.finished(now)):
            if batch.cancelled is not None:
                continue  # counted when it was cancelled; it made nothing
            self.counters.batches_succeeded += 1
            if batch.responses is not None:
                made = self.files.add_generated(
                    batch.responses, "application/jsonl", None, batch.due, file_id=f"batch-{batch.id}"
                )
                batch.responses_file, batch.responses = f"files/{made.id}", None
        for operation in self.operations.settle(lambda o: o.done(now)):
            if not operation.vertex:  # Vertex answers the bytes (or a gs:// URI) in the operation
                operation.video_files = [
                    self.files.add_generated(video, "video/mp4", None, operation.due).id
                    for video in operation.videos
                ]

    def stats_json(self) -> dict[str, Any]:
        self.settle_jobs(time.time())
        now_requests, now_tokens = self.quota.in_window(self.clock())
        return {
            **asdict(self.counters),
            "by_model": dict(self.by_model),
            "by_tier": dict(self.by_tier),
            "live": dict(self.live_counts),
            "max_in_window": self.quota.max_in_window,
            "max_tokens_in_window": self.quota.max_tokens_in_window,
            "in_window": now_requests,
            "tokens_in_window": now_tokens,
            "stored_interactions": len(self.interaction_book),
            "stored_files": len(self.files),
            "pending_uploads": self.files.pending_uploads,
            "stored_caches": len(self.caches),
            "stored_batches": len(self.batches),
            "stored_operations": len(self.operations),
            "config": self.config_json(),
        }

    def config_json(self) -> dict[str, Any]:
        return {**asdict(self.config), "fault": self.fault, "fault_count": self.fault_count}

    def reset(self) -> None:
        self.counters = Counters()
        self.by_model.clear()
        self.by_tier.clear()
        self.live_counts.clear()
        self.quota.reset()
        self.interaction_book.clear()
        self.files.clear()
        self.caches.clear()
        self.batches.clear()
        self.operations.clear()
        self.fault, self.fault_count = None, 0

    def configure(self, changes: dict[str, Any]) -> None:
        """Validate every change first, then apply them all (raises :class:`answers.BadRequest`)."""
        known = {f.name for f in fields(SimulatorConfig)} | {"fault", "count"}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise answers.BadRequest(f"unknown simulator setting(s): {', '.join(unknown)}")
        new = replace(self.config)
        for name in ("latency_ms", "chunk_delay_ms", "window_s", "background_ms", "batch_ms", "operation_ms"):
            if name in changes:
                value = changes[name]
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise answers.BadRequest(f"{name} must be a number >= 0")
                setattr(new, name, float(value))
        for name in ("rpm", "tpm", "chunks", "max_body_bytes", "cache_min_tokens"):
            if name in changes:
                value = changes[name] if changes[name] is not None else 0
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise answers.BadRequest(f"{name} must be an integer >= 0 (0 or null: unlimited)")
                setattr(new, name, value)
        if "models" in changes:
            new.models = check_models(changes["models"])
        for name in ("any_model", "downgrade_priority"):
            if name in changes:
                if not isinstance(changes[name], bool):
                    raise answers.BadRequest(f"{name} must be true or false")
                setattr(new, name, changes[name])
        if new.window_s <= 0 or new.chunks < 1:
            raise answers.BadRequest("window_s must be > 0 and chunks >= 1")
        fault, count = self.fault, self.fault_count
        if "fault" in changes:
            fault = changes["fault"]
            count = changes.get("count", 1)
            if fault is not None and fault not in FAULTS:
                raise answers.BadRequest(f"fault must be one of {', '.join(FAULTS)} or null")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise answers.BadRequest("count must be an integer >= 0")
            if fault is None or count == 0:
                fault, count = None, 0
        self.config = new
        self.quota.rpm, self.quota.tpm, self.quota.window = new.rpm, new.tpm, new.window_s
        self.fault, self.fault_count = fault, count
