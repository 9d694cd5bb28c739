"""The simulator's Files API (Gemini API only; docs/wire.md): resumable upload, get, list,
delete and download, in the shapes google-genai 3.x sends and parses.

Upload is Google's resumable protocol, driven by ``X-Goog-Upload-*`` headers:

- ``POST /upload/{v}/files`` with ``X-Goog-Upload-Command: start`` opens a session and answers
  its absolute URL in ``x-goog-upload-url`` (the same path with ``upload_id`` in the query; see
  :func:`~knowctl.simulator.resources.public_base` for how the URL is built under a mount);
- ``POST`` of that URL with ``upload`` / ``upload, finalize`` / ``finalize`` and
  ``X-Goog-Upload-Offset`` sends a chunk; ``query`` tells how much arrived; ``cancel`` ends it.

A chunk's body is *streamed*: each ASGI ``http.request`` piece is hashed and counted as it
arrives and then let go, so neither a file nor a chunk is ever held whole. Every upload answer
says ``x-goog-upload-status``, errors too, because google-genai retries a chunk until that
header is present. Its value is the session's state: ``active`` after an error the client can
recover from (a wrong offset; a chunk cut short, whose bytes that did arrive are kept, so the
client can query and resume), ``final`` after one that ends the session (an unknown session,
more bytes than declared, finalize short of them). ``final`` is what makes the SDK stop and
raise the error: on ``active`` it goes on to its next chunk.

Google lets only GENERATED files be downloaded; the control endpoint makes one
(``{"generated_file": {...}}``, :func:`generated_file_spec`).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from knowctl.errors import error_body
from knowctl.net.asgi import (
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    read_body,
    respond,
    respond_error,
)
from knowctl.simulator import answers
from knowctl.simulator.file_store import MAX_DISPLAY_NAME, MAX_FILE_BYTES, StoredFile, Upload
from knowctl.simulator.google_errors import FILE_DENIED, status_error
from knowctl.simulator.resources import header, page, page_size, public_base, query_params

if TYPE_CHECKING:
    from knowctl.simulator.state import SimulatorState

CHUNK_GRANULARITY = 8 * 1024 * 1024  # what Google answers in x-goog-upload-chunk-granularity
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 10, 100  # Google's, for files.list
_METADATA_LIMIT = 1024 * 1024  # the start call's JSON body
_VERSION = r"(?P<version>v1|v1beta|v1alpha)"
_ID = r"(?P<id>[^/:]{1,128})"
_UPLOAD_PATH = re.compile(rf"/upload/{_VERSION}/files")
_FILES_PATH = re.compile(rf"/{_VERSION}/files(?:/{_ID}(?P<download>:download)?)?")
_DOWNLOAD_PATH = re.compile(rf"/download/{_VERSION}/files/{_ID}:download")
# A name a client may ask for: up to 40 lowercase letters, digits and dashes, no dash at an end.
_FILE_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
_COMMANDS = frozenset(
    {
        frozenset({"upload"}),
        frozenset({"upload", "finalize"}),
        frozenset({"finalize"}),
        frozenset({"query"}),
        frozenset({"cancel"}),
    }
)
ACTIVE, FINAL, CANCELLED = b"active", b"final", b"cancelled"
_TEXT = b"text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class FileRoute:
    """A Files API path: ``upload`` (start or chunk), ``collection`` (list), ``file`` or ``download``."""

    kind: str
    version: str
    file_id: str | None = None


def route(path: str) -> FileRoute | None:
    """The Files API call ``path`` names, or None (cheap for every other path: one substring test)."""
    if "/files" not in path:
        return None
    if match := _UPLOAD_PATH.fullmatch(path):
        return FileRoute("upload", match["version"])
    if match := _DOWNLOAD_PATH.fullmatch(path):
        return FileRoute("download", match["version"], match["id"])
    if match := _FILES_PATH.fullmatch(path):
        if match["id"] is None:
            return FileRoute("collection", match["version"])
        return FileRoute("download" if match["download"] else "file", match["version"], match["id"])
    return None


_METHODS = {"upload": ("POST",), "collection": ("GET",), "file": ("GET", "DELETE"), "download": ("GET",)}


async def handle(state: SimulatorState, where: FileRoute, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one Files API call."""
    method = scope["method"]
    if method not in _METHODS[where.kind]:
        await respond_error(send, 405, f"Method {method} is not allowed for {scope['path']}.")
        return
    if where.kind == "upload":
        upload_id = query_params(scope).get("upload_id")
        if upload_id is None:
            await _start(state, where, scope, receive, send)
        else:
            await _chunk(state, where, upload_id, scope, receive, send)
        return
    now = time.time()
    if where.kind == "collection":
        await _list(state, where, scope, send, now)
        return
    assert where.file_id is not None
    record = state.files.get(where.file_id, now)
    if record is None:
        state.counters.not_found += 1
        await respond_error(send, 403, FILE_DENIED.format(id=where.file_id))
    elif where.kind == "download":
        await _download(state, record, send)
    elif method == "DELETE":
        state.files.delete(record.id, now)
        state.counters.files_deleted += 1
        await respond(send, 200, b"{}")
    else:
        await respond(send, 200, orjson.dumps(record.resource(public_base(scope), where.version)))


# ---------------------------------------------------------------------------- upload


def _commands(scope: Scope) -> frozenset[str]:
    raw = header(scope, b"x-goog-upload-command") or ""
    return frozenset(part.strip().lower() for part in raw.split(",") if part.strip())


def _status(value: bytes, *more: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b"x-goog-upload-status", value), *more]


async def _upload_error(
    state: SimulatorState,
    send: Send,
    code: int,
    message: str,
    session: bytes,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """An upload error in Google's shape, saying what became of the session (see the module doc)."""
    if code == 400:
        state.counters.bad_requests += 1
    elif code == 404:
        state.counters.not_found += 1
    await respond(send, code, error_body(code, message), extra_headers=_status(session, *extra))


async def _start(state: SimulatorState, where: FileRoute, scope: Scope, receive: Receive, send: Send) -> None:
    """Open a resumable upload session from the start call's headers and ``{"file": {...}}``."""
    try:
        body = await read_body(receive, _METADATA_LIMIT, header(scope, b"content-length"))
    except BodyTooLarge:
        await _upload_error(state, send, 413, "Request payload size exceeds the limit.", FINAL)
        return
    except ClientDisconnected:
        return
    protocol = (header(scope, b"x-goog-upload-protocol") or "").strip().lower()
    if protocol != "resumable":
        message = "The simulator takes resumable uploads only: X-Goog-Upload-Protocol: resumable."
        await _upload_error(state, send, 400, message, FINAL)
        return
    if _commands(scope) != {"start"}:
        message = "A new upload needs X-Goog-Upload-Command: start (an upload_id names an open one)."
        await _upload_error(state, send, 400, message, FINAL)
        return
    try:
        file_id, display_name, mime_type, declared = _start_fields(scope, body)
    except answers.BadRequest as exc:
        await _upload_error(state, send, 400, str(exc), FINAL)
        return
    if file_id is not None and state.files.get(file_id, time.time()) is not None:
        exists = status_error(409, "ALREADY_EXISTS", f"File files/{file_id} already exists.")
        await respond(send, 409, exists, extra_headers=_status(FINAL))
        return
    upload = state.files.start(mime_type, declared, file_id, display_name, time.time())
    state.counters.uploads_started += 1
    url = f"{public_base(scope)}/upload/{where.version}/files?upload_id={upload.id}&upload_protocol=resumable"
    headers = _status(
        ACTIVE,
        (b"x-goog-upload-url", url.encode()),
        (b"x-goog-upload-control-url", url.encode()),
        (b"x-goog-upload-chunk-granularity", str(CHUNK_GRANULARITY).encode()),
        (b"x-guploader-uploadid", upload.id.encode()),
    )
    await respond(send, 200, b"", _TEXT, headers)


def _start_fields(scope: Scope, body: bytes) -> tuple[str | None, str | None, str, int | None]:
    """The requested id, display name, MIME type and declared size (None: not declared)."""
    metadata: dict[str, Any] = {}
    if body.strip():
        payload = answers.parse_json_object(body)
        inner = payload.get("file", {})
        if not isinstance(inner, dict):
            raise answers.BadRequest("Invalid JSON payload received. 'file' must be an object.")
        metadata = inner
    file_id = None
    name = metadata.get("name")
    if name is not None:
        file_id = name.removeprefix("files/") if isinstance(name, str) else ""
        if not _FILE_ID.fullmatch(file_id):
            raise answers.BadRequest(
                f"Invalid file name {name!r}: up to 40 lowercase letters, digits or dashes, "
                "not starting or ending with a dash."
            )
    display_name = metadata.get("displayName", metadata.get("display_name"))
    if display_name is not None and (
        not isinstance(display_name, str) or len(display_name) > MAX_DISPLAY_NAME
    ):
        raise answers.BadRequest(f"display_name must be a string of at most {MAX_DISPLAY_NAME} characters.")
    # The headers win; google-genai sends both, its body in snake_case (Google reads either case).
    mime_type = header(scope, b"x-goog-upload-header-content-type") or metadata.get(
        "mimeType", metadata.get("mime_type")
    )
    if not isinstance(mime_type, str) or not mime_type.strip():
        mime_type = "application/octet-stream"
    raw_size = header(scope, b"x-goog-upload-header-content-length")
    body_size = metadata.get("sizeBytes", metadata.get("size_bytes"))
    if raw_size is None and body_size is not None:
        raw_size = str(body_size)
    declared = None
    if raw_size is not None:
        if not raw_size.strip().isdigit():
            raise answers.BadRequest(f"Invalid X-Goog-Upload-Header-Content-Length: {raw_size!r}.")
        declared = int(raw_size)
        if declared > MAX_FILE_BYTES:
            raise answers.BadRequest(
                f"File size {declared} exceeds the limit of {MAX_FILE_BYTES} bytes (2 GB)."
            )
    return file_id, display_name, mime_type.strip(), declared


async def _chunk(
    state: SimulatorState, where: FileRoute, upload_id: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """One call on an open session: a chunk (streamed), finalize, query or cancel."""
    files = state.files
    upload = files.upload(upload_id)
    if upload is None:
        await _upload_error(state, send, 404, f"No upload session {upload_id!r}: unknown or ended.", FINAL)
        return
    commands = _commands(scope)
    if commands not in _COMMANDS:
        message = "X-Goog-Upload-Command must be upload, 'upload, finalize', finalize, query or cancel."
        await _upload_error(state, send, 400, message, FINAL if upload.final_file else ACTIVE)
        return
    if upload.final_file is not None:
        await _on_final(state, where, upload, commands, scope, send)
        return
    received = (b"x-goog-upload-size-received", str(upload.received).encode())
    if commands == {"query"}:
        await respond(send, 200, b"", _TEXT, _status(ACTIVE, received))
        return
    if commands == {"cancel"}:
        files.drop_upload(upload.id)
        await respond(send, 200, b"", _TEXT, _status(CANCELLED))
        return
    if upload.busy:
        await _upload_error(state, send, 409, "Another chunk of this upload is being received.", ACTIVE)
        return
    offset = header(scope, b"x-goog-upload-offset")
    if offset is None or not offset.strip().isdigit():
        await _upload_error(
            state, send, 400, "A chunk needs X-Goog-Upload-Offset: bytes sent before it.", ACTIVE
        )
        return
    if int(offset) != upload.received:
        message = f"Invalid upload offset {int(offset)}: the upload has received {upload.received} bytes."
        await _upload_error(state, send, 400, message, ACTIVE, [received])
        return
    length = header(scope, b"content-length")
    # A Content-Length that says the chunk passes the declared size is refused before it is read.
    if length is not None and length.strip().isdigit() and upload.received + int(length) > upload.limit:
        await _too_many(state, upload, send)
        return
    upload.busy = True
    try:
        outcome = await _stream_into(state, upload, receive)
    finally:
        upload.busy = False
    if outcome == "disconnected":
        # Google keeps what arrived: the client may query and resume. It is gone, so this answer
        # goes nowhere under uvicorn; a host app that mounts the simulator may still relay it.
        message = f"The chunk was cut short: {upload.received} bytes of this upload were received."
        await _upload_error(state, send, 400, message, ACTIVE)
        return
    if outcome == "too_many":
        await _too_many(state, upload, send)
        return
    if "finalize" not in commands:
        await respond(send, 200, b"", _TEXT, _status(ACTIVE))
        return
    if upload.declared is not None and upload.received < upload.declared:
        files.drop_upload(upload.id)
        message = (
            f"Failed to finalize the upload: {upload.received} bytes were received, "
            f"{upload.declared} were declared (X-Goog-Upload-Header-Content-Length)."
        )
        await _upload_error(state, send, 400, message, FINAL)
        return
    record = files.finish(upload, time.time())
    state.counters.uploads_finished += 1
    await _answer_final(where, record, scope, send)


async def _stream_into(state: SimulatorState, upload: Upload, receive: Receive) -> str:
    """Hash and count the request body piece by piece: ``complete``, ``disconnected`` (the client
    went before its body was whole; what arrived is kept) or ``too_many`` (past the declared
    size, or 2 GB when none was declared; the rest is not read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return "disconnected"
        piece = message.get("body", b"")
        if piece:
            if upload.received + len(piece) > upload.limit:
                return "too_many"
            upload.take(piece)
            state.counters.upload_bytes += len(piece)
        if not message.get("more_body", False):
            return "complete"


async def _too_many(state: SimulatorState, upload: Upload, send: Send) -> None:
    state.files.drop_upload(upload.id)
    message = (
        f"The upload passed its declared size of {upload.limit} bytes "
        "(X-Goog-Upload-Header-Content-Length, or the 2 GB limit); the session is closed."
    )
    await _upload_error(state, send, 400, message, FINAL)


async def _on_final(
    state: SimulatorState,
    where: FileRoute,
    upload: Upload,
    commands: frozenset[str],
    scope: Scope,
    send: Send,
) -> None:
    """A session that already made its file: a query answers the file again, anything else is refused."""
    assert upload.final_file is not None
    record = state.files.get(upload.final_file, time.time())
    if commands == {"query"} and record is not None:
        await _answer_final(where, record, scope, send)
        return
    await _upload_error(state, send, 400, "This upload is already finalized.", FINAL)


async def _answer_final(where: FileRoute, record: StoredFile, scope: Scope, send: Send) -> None:
    body = orjson.dumps({"file": record.resource(public_base(scope), where.version)})
    size = (b"x-goog-upload-size-received", str(record.size).encode())
    await respond(send, 200, body, extra_headers=_status(FINAL, size))


# ---------------------------------------------------------------------------- list, download


async def _list(state: SimulatorState, where: FileRoute, scope: Scope, send: Send, now: float) -> None:
    """``files.list``, newest first as Google lists them; both keys left out when there is nothing."""
    params = query_params(scope)
    try:
        size = page_size(params, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        chosen, token = page(state.files.newest_first(now), lambda f: f.seq, size, params.get("pageToken"))
    except answers.BadRequest as exc:
        state.counters.bad_requests += 1
        await respond_error(send, 400, str(exc))
        return
    state.counters.files_listed += 1
    base = public_base(scope)
    out: dict[str, Any] = {}
    if chosen:
        out["files"] = [f.resource(base, where.version) for f in chosen]
    if token is not None:
        out["nextPageToken"] = token
    await respond(send, 200, orjson.dumps(out))


async def _download(state: SimulatorState, record: StoredFile, send: Send) -> None:
    if record.data is None:
        state.counters.bad_requests += 1
        await respond_error(
            send, 400, f"Only generated files can be downloaded; files/{record.id} was uploaded."
        )
        return
    await respond(send, 200, record.data, record.mime_type.encode())


# ---------------------------------------------------------------------------- control


@dataclass(frozen=True, slots=True)
class GeneratedFileSpec:
    """What ``{"generated_file": {...}}`` on ``POST /_simulator/config`` asks for."""

    data: bytes
    mime_type: str
    display_name: str | None


def generated_file_spec(value: Any) -> GeneratedFileSpec:
    """Read ``{"bytes_b64": ..., "mime_type"?: ..., "display_name"?: ...}`` (raises BadRequest)."""
    if not isinstance(value, dict):
        raise answers.BadRequest("generated_file must be an object with bytes_b64")
    unknown = sorted(set(value) - {"bytes_b64", "mime_type", "display_name"})
    if unknown:
        raise answers.BadRequest(f"generated_file: unknown field(s) {', '.join(unknown)}")
    try:
        data = base64.b64decode(value.get("bytes_b64", ""), validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise answers.BadRequest("generated_file.bytes_b64 must be base64 text") from None
    mime_type = value.get("mime_type", "application/octet-stream")
    display_name = value.get("display_name")
    if not isinstance(mime_type, str) or not mime_type:
        raise answers.BadRequest("generated_file.mime_type must be a MIME type such as video/mp4")
    if display_name is not None and (
        not isinstance(display_name, str) or len(display_name) > MAX_DISPLAY_NAME
    ):
        raise answers.BadRequest(f"generated_file.display_name must be at most {MAX_DISPLAY_NAME} characters")
    return GeneratedFileSpec(data, mime_type, display_name)


def add_generated(state: SimulatorState, spec: GeneratedFileSpec, scope: Scope) -> dict[str, Any]:
    """Store a GENERATED file and answer its resource (named under v1beta, as Google's URIs are)."""
    record = state.files.add_generated(spec.data, spec.mime_type, spec.display_name, time.time())
    return record.resource(public_base(scope), "v1beta")
