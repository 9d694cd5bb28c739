"""The files and resumable uploads the simulator remembers: bounded books, oldest dropped first.

Pure code with the time passed in. An uploaded file keeps its size and SHA-256, and its bytes
only when it is small (at most :data:`KEPT_UPLOAD_BYTES`): a test uploads hundreds of
megabytes, and Google does not let uploaded files be downloaded anyway, but a batch job reads
its JSONL input file (:mod:`knowctl.simulator.batches`). A GENERATED file (made through the
control endpoint, or as a batch's responses or a video) keeps its bytes, to be downloaded.
Both kinds of kept bytes are bounded in total. An upload streams: each piece of a chunk goes
into the running hash and the byte count as it arrives.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from knowctl.simulator.resources import new_id, rfc3339

FILE_TTL_S = 48 * 3600.0  # Google deletes a file 48 hours after it was created
MAX_FILE_BYTES = 2 * 1024**3  # Google's limit per file
MAX_DISPLAY_NAME = 512
UPLOADED = "UPLOADED"
GENERATED = "GENERATED"
DEFAULT_FILE_CAPACITY = 10_000
DEFAULT_UPLOAD_CAPACITY = 1_000
DEFAULT_GENERATED_BYTES = 64 * 1024 * 1024  # the generated files' bytes kept, in total
KEPT_UPLOAD_BYTES = 1024 * 1024  # an uploaded file this small keeps its bytes (a batch's input)
DEFAULT_KEPT_UPLOADS_BYTES = 64 * 1024 * 1024  # the uploaded files' kept bytes, in total

_seq = count(1)  # orders records across books: the newest has the highest number


def google_sha256(hexdigest: str) -> str:
    """``sha256Hash`` as the Gemini API writes it: the base64 of the *hex* digest's text (an
    88-character string), not of the raw 32-byte digest."""
    return base64.b64encode(hexdigest.encode()).decode()


@dataclass(slots=True)
class StoredFile:
    """One file: what it is and when it goes; ``data`` only for a GENERATED file (downloadable),
    ``content`` only for a small uploaded one (readable by a batch job, never downloaded)."""

    id: str
    mime_type: str
    size: int
    sha256: str  # already in Google's encoding (:func:`google_sha256`)
    created: float
    display_name: str | None = None
    source: str = UPLOADED
    data: bytes | None = None
    content: bytes | None = None
    seq: int = field(default_factory=lambda: next(_seq))

    @property
    def expires(self) -> float:
        return self.created + FILE_TTL_S

    def resource(self, base: str, version: str) -> dict[str, Any]:
        """The ``File`` as Google answers it; its URLs start at ``base`` (see ``public_base``)."""
        out: dict[str, Any] = {"name": f"files/{self.id}"}
        if self.display_name is not None:
            out["displayName"] = self.display_name
        out |= {
            "mimeType": self.mime_type,
            "sizeBytes": str(self.size),  # int64 in JSON: a string
            "createTime": rfc3339(self.created),
            "updateTime": rfc3339(self.created),
            "expirationTime": rfc3339(self.expires),
            "sha256Hash": self.sha256,
            "uri": f"{base}/{version}/files/{self.id}",
        }
        if self.source == GENERATED:
            out["downloadUri"] = f"{base}/{version}/files/{self.id}:download?alt=media"
        out |= {"state": "ACTIVE", "source": self.source}
        return out


@dataclass(slots=True)
class Upload:
    """One resumable upload session: what the start call declared and what has arrived."""

    id: str
    mime_type: str
    declared: int | None  # X-Goog-Upload-Header-Content-Length; None: known at finalize
    started: float
    file_id: str | None = None  # a name the start call asked for
    display_name: str | None = None
    received: int = 0
    busy: bool = False  # a chunk is being received: a second one at once is refused
    hasher: Any = field(default_factory=hashlib.sha256)  # hashlib's type is private
    final_file: str | None = None  # the file it made, once finalized
    # The bytes so far while they fit in KEPT_UPLOAD_BYTES (None once they do not, or when more
    # was declared): a small file keeps them, for a batch job to read.
    kept: bytearray | None = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        if self.declared is not None and self.declared > KEPT_UPLOAD_BYTES:
            self.kept = None

    @property
    def limit(self) -> int:
        """The most bytes this upload may hold: what was declared, or Google's per-file limit."""
        return self.declared if self.declared is not None else MAX_FILE_BYTES

    def take(self, piece: bytes | memoryview) -> None:
        """Count and hash one piece of a chunk; the piece itself is kept only while the upload
        stays within :data:`KEPT_UPLOAD_BYTES`."""
        self.hasher.update(piece)
        self.received += len(piece)
        if self.kept is not None:
            if self.received > KEPT_UPLOAD_BYTES:
                self.kept = None
            else:
                self.kept += piece


class FileBook:
    """The last ``capacity`` files and ``upload_capacity`` upload sessions, by id."""

    def __init__(
        self,
        capacity: int = DEFAULT_FILE_CAPACITY,
        upload_capacity: int = DEFAULT_UPLOAD_CAPACITY,
        generated_bytes: int = DEFAULT_GENERATED_BYTES,
        kept_upload_bytes: int = DEFAULT_KEPT_UPLOADS_BYTES,
    ) -> None:
        self.capacity = capacity
        self.upload_capacity = upload_capacity
        self.generated_bytes = generated_bytes
        self.kept_upload_bytes = kept_upload_bytes
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._uploads: OrderedDict[str, Upload] = OrderedDict()

    def __len__(self) -> int:
        return len(self._files)

    @property
    def pending_uploads(self) -> int:
        return sum(1 for u in self._uploads.values() if u.final_file is None)

    def clear(self) -> None:
        self._files.clear()
        self._uploads.clear()

    # ------------------------------------------------------------------ files

    def put(self, record: StoredFile) -> None:
        self._files[record.id] = record
        while len(self._files) > self.capacity:
            self._files.popitem(last=False)
        kept = sum(len(f.data) for f in self._files.values() if f.data is not None)
        for old in list(self._files.values()):  # oldest first
            if kept <= self.generated_bytes or old is record:
                break
            if old.data is not None:
                kept -= len(old.data)
                del self._files[old.id]
        # Past their budget the oldest uploaded files forget their bytes (a batch can no longer
        # read them) but stay.
        content = sum(len(f.content) for f in self._files.values() if f.content is not None)
        for old in list(self._files.values()):
            if content <= self.kept_upload_bytes or old is record:
                break
            if old.content is not None:
                content -= len(old.content)
                old.content = None

    def get(self, file_id: str, now: float) -> StoredFile | None:
        record = self._files.get(file_id)
        if record is not None and now >= record.expires:
            del self._files[file_id]
            return None
        return record

    def delete(self, file_id: str, now: float) -> bool:
        return self.get(file_id, now) is not None and self._files.pop(file_id, None) is not None

    def newest_first(self, now: float) -> list[StoredFile]:
        for gone in [f.id for f in self._files.values() if now >= f.expires]:
            del self._files[gone]
        return sorted(self._files.values(), key=lambda f: f.seq, reverse=True)

    def unused_id(self) -> str:
        while True:
            file_id = new_id()
            if file_id not in self._files:
                return file_id

    def add_generated(
        self, data: bytes, mime_type: str, display_name: str | None, now: float, file_id: str | None = None
    ) -> StoredFile:
        """A file as a model would have generated it (a video, a batch's responses): its bytes
        can be downloaded. ``file_id``: the id it must have (Google names a batch's responses
        ``batch-{batch id}``); a file of that id already there is replaced."""
        record = StoredFile(
            id=file_id or self.unused_id(),
            mime_type=mime_type,
            size=len(data),
            sha256=google_sha256(hashlib.sha256(data).hexdigest()),
            created=now,
            display_name=display_name,
            source=GENERATED,
            data=data,
        )
        self.put(record)
        return record

    # ------------------------------------------------------------------ uploads

    def start(
        self, mime_type: str, declared: int | None, file_id: str | None, display_name: str | None, now: float
    ) -> Upload:
        upload = Upload(
            id=secrets.token_urlsafe(48),
            mime_type=mime_type,
            declared=declared,
            started=now,
            file_id=file_id,
            display_name=display_name,
        )
        self._uploads[upload.id] = upload
        while len(self._uploads) > self.upload_capacity:
            self._uploads.popitem(last=False)
        return upload

    def upload(self, upload_id: str) -> Upload | None:
        return self._uploads.get(upload_id)

    def drop_upload(self, upload_id: str) -> None:
        self._uploads.pop(upload_id, None)

    def finish(self, upload: Upload, now: float) -> StoredFile:
        """The file a complete upload makes; the session stays (final) so a query can see it."""
        file_id = upload.file_id if upload.file_id and upload.file_id not in self._files else None
        record = StoredFile(
            id=file_id or self.unused_id(),
            mime_type=upload.mime_type,
            size=upload.received,
            sha256=google_sha256(upload.hasher.hexdigest()),
            created=now,
            display_name=upload.display_name,
            content=bytes(upload.kept) if upload.kept is not None else None,
        )
        upload.final_file = record.id
        upload.hasher = None  # done with: a final session keeps no hash state
        upload.kept = None
        self.put(record)
        return record
