"""The simulator's Files API (resumable upload, get, list, delete, download) and context caches
(cachedContents), through the official google-genai 3.x client against a real simulator
process, and raw HTTP for what the SDK never sends (bad offsets, cut chunks, short finalizes)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.oauth2.credentials import Credentials

from knowctl.net.asgi import Receive, Scope, Send
from knowctl.simulator.app import SimulatorApp, SimulatorConfig
from knowctl.simulator.file_store import FileBook, StoredFile
from tests.support.net import LOOPBACK, free_port, wait_http
from tests.support.simulator import Simulator, simulator_process

MODEL = "gemini-2.5-flash"
OCTETS = "application/octet-stream"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    with simulator_process(log_path=tmp_path_factory.mktemp("sim") / "simulator.log") as sim:
        yield sim


@pytest.fixture
def sim(sim_process: Simulator) -> Simulator:
    sim_process.restore()  # also drops every file, upload session and cache
    sim_process.configure(cache_min_tokens=0)
    return sim_process


def genai_client(base_url: str) -> Any:  # the SDK's unions, untyped here
    return genai.Client(api_key="k", http_options=types.HttpOptions(base_url=base_url))


def vertex_client(sim: Simulator) -> Any:
    return genai.Client(
        vertexai=True,
        project="demo-project",
        location="us-central1",
        credentials=Credentials(token="static-oauth-token"),  # type: ignore[no-untyped-call]
        http_options=types.HttpOptions(base_url=sim.url),
    )


def google_sha256(data: bytes) -> str:
    """The Gemini API's sha256Hash: base64 of the hex digest's text."""
    return base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode()


def tokens(*texts: str) -> int:
    return max(1, math.ceil(sum(len(t.encode()) for t in texts) / 4))


def start_upload(sim: Simulator, size: int | None, version: str = "v1beta") -> str:
    """Open a session by hand, as the SDK does; the upload URL it answers."""
    headers = {
        "X-Goog-Upload-Protocol": "resumable",
        "X-Goog-Upload-Command": "start",
        "X-Goog-Upload-Header-Content-Type": OCTETS,
    }
    if size is not None:
        headers["X-Goog-Upload-Header-Content-Length"] = str(size)
    started = httpx.post(
        f"{sim.url}/upload/{version}/files",
        headers=headers,
        json={"file": {"displayName": "raw"}},
        timeout=10,
    )
    assert started.status_code == 200 and started.content == b""
    assert started.headers["x-goog-upload-status"] == "active"
    assert started.headers["x-goog-upload-chunk-granularity"] == "8388608"
    url = started.headers["x-goog-upload-url"]
    assert started.headers["x-goog-upload-control-url"] == url
    return url


def chunk(url: str, command: str, offset: int | None = None, content: Any = b"") -> httpx.Response:
    headers = {"X-Goog-Upload-Command": command}
    if offset is not None:
        headers["X-Goog-Upload-Offset"] = str(offset)
    return httpx.post(url, headers=headers, content=content, timeout=10)


def google_error(response: httpx.Response, code: int, status: str) -> str:
    """Assert Google's error shape; the message."""
    assert response.status_code == code, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["status"] == status
    message: str = error["message"]
    return message


def still_serves(sim: Simulator) -> None:
    client = genai_client(sim.url)  # kept: a client that is garbage-collected closes its connections
    answer = client.models.generate_content(model=MODEL, contents="still there?")
    assert answer.text.startswith("Simulated answer")


# ---------------------------------------------------------------- files through the SDK


def test_upload_get_list_delete(sim: Simulator) -> None:
    client = genai_client(sim.url)
    data = os.urandom(3 * MB)
    uploaded = client.files.upload(file=io.BytesIO(data), config={"mime_type": OCTETS, "display_name": "x"})
    assert uploaded.name is not None and re.fullmatch(r"files/[a-z0-9]{12}", uploaded.name)
    assert uploaded.size_bytes == len(data) and uploaded.state == types.FileState.ACTIVE
    assert uploaded.sha256_hash == google_sha256(data) and uploaded.display_name == "x"
    assert uploaded.mime_type == OCTETS and uploaded.source == types.FileSource.UPLOADED
    assert uploaded.uri == f"{sim.url}/v1/files/{uploaded.name.removeprefix('files/')}"
    assert uploaded.download_uri is None  # uploaded files cannot be downloaded
    assert uploaded.create_time is not None and uploaded.expiration_time is not None
    assert uploaded.expiration_time - uploaded.create_time == timedelta(hours=48)
    got = client.files.get(name=uploaded.name)
    assert got == uploaded
    assert [f.name for f in client.files.list()] == [uploaded.name]
    client.files.delete(name=uploaded.name)
    with pytest.raises(genai_errors.APIError) as gone:
        client.files.get(name=uploaded.name)
    assert gone.value.code == 403 and gone.value.status == "PERMISSION_DENIED"
    assert "You do not have permission to access the File" in str(gone.value.message)
    stats = sim.stats()
    assert stats["uploads_started"] == stats["uploads_finished"] == 1
    assert stats["upload_bytes"] == len(data) and stats["files_deleted"] == 1 and stats["stored_files"] == 0


def test_list_pages_newest_first(sim: Simulator) -> None:
    client = genai_client(sim.url)
    assert httpx.get(f"{sim.url}/v1beta/files", timeout=10).json() == {}  # no keys when empty
    names = [
        client.files.upload(file=io.BytesIO(f"file {i}".encode()), config={"mime_type": "text/plain"}).name
        for i in range(3)
    ]
    pager = client.files.list(config={"page_size": 1})
    assert len(pager.page) == 1
    assert [f.name for f in pager] == names[::-1]  # newest first, one page at a time
    first = httpx.get(f"{sim.url}/v1beta/files", params={"pageSize": 2}, timeout=10).json()
    assert [f["name"] for f in first["files"]] == names[:0:-1]
    last = httpx.get(
        f"{sim.url}/v1beta/files", params={"pageSize": 2, "pageToken": first["nextPageToken"]}, timeout=10
    ).json()
    assert [f["name"] for f in last["files"]] == names[:1] and "nextPageToken" not in last
    bad = httpx.get(f"{sim.url}/v1beta/files", params={"pageToken": "!!"}, timeout=10)
    google_error(bad, 400, "INVALID_ARGUMENT")
    assert sim.stats()["files_listed"] == 6  # the empty list, the SDK's three pages, two by hand


def test_large_upload_streams_without_holding_the_file(sim_process: Simulator) -> None:
    """300 MB from a generator-backed file: neither the test nor the simulator holds it, nor
    the simulator even one of the SDK's 8 MiB chunks (its RSS grows by less than that)."""
    sim = sim_process
    sim.restore()
    client = genai_client(sim.url)
    client.files.upload(file=io.BytesIO(b"warm up"), config={"mime_type": "text/plain"})
    size = 300 * MB
    baseline = rss_bytes(sim.proc.pid)
    peak, stop = baseline, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_bytes(sim.proc.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    began = time.monotonic()
    try:
        uploaded = client.files.upload(file=GeneratedBytes(size), config={"mime_type": OCTETS})
    finally:
        stop.set()
        sampler.join()
    elapsed = time.monotonic() - began
    assert uploaded.size_bytes == size and uploaded.state == types.FileState.ACTIVE
    assert uploaded.sha256_hash == GeneratedBytes(size).google_sha256()
    # Streamed, it grows by about 1 MB; holding one 8 MiB chunk whole costs 16 MB, the file 300.
    assert peak - baseline < 8 * MB, f"simulator RSS grew {(peak - baseline) / MB:.1f} MB"
    assert elapsed < 20, f"300 MB took {elapsed:.1f} s"
    assert sim.stats()["upload_bytes"] == size + len(b"warm up")


def test_sdk_raises_the_google_error_when_the_simulator_ends_the_upload(sim: Simulator) -> None:
    """A file that tells the SDK 10 bytes and reads 20: the chunk passes the declared size, the
    answer says ``final``, and the SDK raises Google's error (``active`` would have it go on)."""
    client = genai_client(sim.url)
    with pytest.raises(genai_errors.APIError) as refused:
        client.files.upload(file=LyingSize(b"0123456789" * 2, claimed=10), config={"mime_type": OCTETS})
    assert refused.value.code == 400 and refused.value.status == "INVALID_ARGUMENT"
    assert "declared size of 10 bytes" in str(refused.value.message)
    assert sim.stats()["pending_uploads"] == 0 and sim.stats()["stored_files"] == 0


def test_generated_files_download_and_uploaded_ones_do_not(sim: Simulator) -> None:
    client = genai_client(sim.url)
    video = os.urandom(5000)
    made = httpx.post(
        f"{sim.url}/_simulator/config",
        json={
            "generated_file": {
                "display_name": "clip",
                "mime_type": "video/mp4",
                "bytes_b64": base64.b64encode(video).decode(),
            }
        },
        timeout=10,
    )
    assert made.status_code == 200
    generated = made.json()["generated_file"]
    assert generated["source"] == "GENERATED" and generated["sizeBytes"] == "5000"
    assert generated["sha256Hash"] == google_sha256(video)
    file = client.files.get(name=generated["name"])
    assert file.source == types.FileSource.GENERATED and file.download_uri is not None
    assert client.files.download(file=file) == video
    file_id = generated["name"].removeprefix("files/")
    raw = httpx.get(
        f"{sim.url}/download/v1beta/files/{file_id}:download", params={"alt": "media"}, timeout=10
    )
    assert raw.status_code == 200 and raw.content == video and raw.headers["content-type"] == "video/mp4"
    uploaded = client.files.upload(file=io.BytesIO(b"mine"), config={"mime_type": "text/plain"})
    with pytest.raises(genai_errors.APIError) as refused:
        client.files.download(file=uploaded.name)  # a name: the SDK asks the server
    assert refused.value.code == 400 and "Only generated files can be downloaded" in str(
        refused.value.message
    )
    bad = httpx.post(f"{sim.url}/_simulator/config", json={"generated_file": {"bytes_b64": "*"}}, timeout=10)
    assert bad.status_code == 400 and sim.stats()["stored_files"] == 2


def test_reset_drops_files_and_sessions(sim: Simulator) -> None:
    client = genai_client(sim.url)
    client.files.upload(file=io.BytesIO(b"kept until reset"), config={"mime_type": "text/plain"})
    url = start_upload(sim, 10)
    assert sim.stats()["stored_files"] == 1 and sim.stats()["pending_uploads"] == 1
    sim.reset()
    assert sim.stats()["stored_files"] == 0 and sim.stats()["pending_uploads"] == 0
    google_error(chunk(url, "query"), 404, "NOT_FOUND")


def test_file_book_is_bounded_oldest_first() -> None:
    book = FileBook(capacity=2, upload_capacity=2, generated_bytes=10)
    for name in ("a", "b", "c"):
        book.put(StoredFile(id=name, mime_type=OCTETS, size=1, sha256="", created=0.0))
    assert [f.id for f in book.newest_first(1.0)] == ["c", "b"]
    sessions = [book.start(OCTETS, 1, None, None, 0.0) for _ in range(3)]
    assert book.upload(sessions[0].id) is None and book.upload(sessions[2].id) is not None
    big = FileBook(generated_bytes=10)
    first = big.add_generated(b"123456", OCTETS, None, 0.0)
    second = big.add_generated(b"654321", OCTETS, None, 0.0)  # 12 bytes kept: the older one goes
    assert big.get(first.id, 1.0) is None and big.get(second.id, 1.0) is not None
    assert big.get(second.id, 48 * 3600.0) is None  # expired after 48 hours


# ---------------------------------------------------------------- the upload protocol by hand


def test_wrong_offset_unknown_session_and_cancel(sim: Simulator) -> None:
    url = start_upload(sim, 10)
    wrong = chunk(url, "upload", 5, b"01234")
    assert "Invalid upload offset 5" in google_error(wrong, 400, "INVALID_ARGUMENT")
    assert wrong.headers["x-goog-upload-status"] == "active"  # the session goes on
    assert wrong.headers["x-goog-upload-size-received"] == "0"
    empty = chunk(url, "upload", 0, b"")  # harmless: nothing arrives
    assert empty.status_code == 200 and empty.headers["x-goog-upload-status"] == "active"
    google_error(chunk(url, "upload", None, b"01234"), 400, "INVALID_ARGUMENT")  # no offset
    unknown = chunk(url.replace("upload_id=", "upload_id=nope"), "upload", 0, b"01234")
    google_error(unknown, 404, "NOT_FOUND")
    assert unknown.headers["x-goog-upload-status"] == "final"
    assert chunk(url, "upload", 0, b"01234").headers["x-goog-upload-status"] == "active"
    query = chunk(url, "query")
    assert query.status_code == 200 and query.headers["x-goog-upload-size-received"] == "5"
    assert query.headers["x-goog-upload-status"] == "active"
    done = chunk(url, "upload, finalize", 5, b"56789")
    assert done.status_code == 200 and done.headers["x-goog-upload-status"] == "final"
    assert done.json()["file"]["sha256Hash"] == google_sha256(b"0123456789")
    assert done.json()["file"]["displayName"] == "raw"
    again = chunk(url, "query")  # a final session answers its file again
    assert again.headers["x-goog-upload-status"] == "final" and again.json() == done.json()
    cancelled = start_upload(sim, 10)
    assert chunk(cancelled, "cancel").headers["x-goog-upload-status"] == "cancelled"
    google_error(chunk(cancelled, "query"), 404, "NOT_FOUND")
    still_serves(sim)


def test_truncated_chunk_keeps_what_arrived_and_resumes(sim: Simulator) -> None:
    url = start_upload(sim, 1000)
    data = os.urandom(1000)
    target = urlsplit(url)
    request = (
        f"POST {target.path}?{target.query} HTTP/1.1\r\nHost: {target.netloc}\r\n"
        "X-Goog-Upload-Command: upload, finalize\r\nX-Goog-Upload-Offset: 0\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()
    with socket.create_connection((target.hostname, target.port or 80), timeout=10) as raw:
        raw.sendall(request + data[:300])
        wait_until(lambda: sim.stats()["upload_bytes"] == 300)  # it arrived; now the client goes
    wait_until(lambda: sim.stats()["bad_requests"] == 1)  # the simulator saw the cut
    query = chunk(url, "query")
    assert query.headers["x-goog-upload-status"] == "active"
    assert query.headers["x-goog-upload-size-received"] == "300"
    stale = chunk(url, "upload, finalize", 0, data)  # the client must resume where it stopped
    assert stale.headers["x-goog-upload-status"] == "active"
    google_error(stale, 400, "INVALID_ARGUMENT")
    resumed = chunk(url, "upload, finalize", 300, data[300:])
    assert resumed.status_code == 200 and resumed.headers["x-goog-upload-status"] == "final"
    assert resumed.json()["file"]["sizeBytes"] == "1000"
    assert resumed.json()["file"]["sha256Hash"] == google_sha256(data)
    still_serves(sim)


def test_finalize_short_or_past_the_declared_size_ends_the_session(sim: Simulator) -> None:
    short = start_upload(sim, 100)
    refused = chunk(short, "upload, finalize", 0, b"x" * 40)
    assert "40 bytes were received, 100 were declared" in google_error(refused, 400, "INVALID_ARGUMENT")
    assert refused.headers["x-goog-upload-status"] == "final"
    google_error(chunk(short, "query"), 404, "NOT_FOUND")
    streamed = start_upload(sim, 10)  # chunked: no Content-Length to refuse it by, so it is cut
    over = chunk(streamed, "upload", 0, iter([b"0123456", b"789abc"]))
    assert "declared size of 10 bytes" in google_error(over, 400, "INVALID_ARGUMENT")
    assert over.headers["x-goog-upload-status"] == "final"
    finalize_alone = start_upload(sim, 10)
    assert chunk(finalize_alone, "upload", 0, b"0123456789").headers["x-goog-upload-status"] == "active"
    final = chunk(finalize_alone, "finalize", 10)
    assert final.headers["x-goog-upload-status"] == "final" and final.json()["file"]["sizeBytes"] == "10"
    undeclared = start_upload(sim, None)  # no declared size: known at finalize
    assert chunk(undeclared, "upload, finalize", 0, b"abc").json()["file"]["sizeBytes"] == "3"
    stats = sim.stats()
    assert stats["uploads_started"] == 4 and stats["uploads_finished"] == 2 and stats["pending_uploads"] == 0
    still_serves(sim)


def test_start_refusals(sim: Simulator) -> None:
    base = f"{sim.url}/upload/v1beta/files"
    start = {"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start"}
    multipart = httpx.post(base, headers={**start, "X-Goog-Upload-Protocol": "multipart"}, timeout=10)
    google_error(multipart, 400, "INVALID_ARGUMENT")
    too_big = httpx.post(
        base, headers={**start, "X-Goog-Upload-Header-Content-Length": str(3 * 1024**3)}, timeout=10
    )
    assert "exceeds the limit" in google_error(too_big, 400, "INVALID_ARGUMENT")
    named = httpx.post(base, headers=start, json={"file": {"name": "files/my-file"}}, timeout=10)
    assert named.status_code == 200
    assert chunk(named.headers["x-goog-upload-url"], "upload, finalize", 0, b"hi").json()["file"]["name"] == (
        "files/my-file"
    )
    taken = httpx.post(base, headers=start, json={"file": {"name": "files/my-file"}}, timeout=10)
    google_error(taken, 409, "ALREADY_EXISTS")
    bad_name = httpx.post(base, headers=start, json={"file": {"name": "files/-Bad"}}, timeout=10)
    google_error(bad_name, 400, "INVALID_ARGUMENT")
    assert httpx.get(base, timeout=10).status_code == 405


# ---------------------------------------------------------------- mounted under a prefix (root_path)


class Mount:
    """A host app serving the simulator under ``prefix``, as the gateway's --simulate mode does:
    it sets ``root_path`` and strips the prefix from ``path`` (or, ``keep_path``, leaves it)."""

    def __init__(self, app: SimulatorApp, prefix: str, keep_path: bool) -> None:
        self.app, self.prefix, self.keep_path = app, prefix, keep_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        assert path.startswith(self.prefix + "/"), path
        inner = path if self.keep_path else path[len(self.prefix) :]
        await self.app({**scope, "path": inner, "root_path": self.prefix}, receive, send)


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(app, host=LOOPBACK, port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_http(f"http://{LOOPBACK}:{port}/mnt/_simulator/stats", timeout=10)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("keep_path", [False, True], ids=["path-stripped", "path-with-prefix"])
def test_upload_url_and_uri_carry_the_mount_prefix(keep_path: bool) -> None:
    app = SimulatorApp(SimulatorConfig(any_model=True))
    with serve_in_thread(Mount(app, "/mnt", keep_path)) as url:
        client = genai_client(f"{url}/mnt")
        uploaded = client.files.upload(file=io.BytesIO(b"x" * 1000), config={"mime_type": "text/plain"})
        assert uploaded.uri is not None and uploaded.uri.startswith(f"{url}/mnt/v1/files/")
        assert client.files.get(name=uploaded.name).size_bytes == 1000
        started = httpx.post(
            f"{url}/mnt/upload/v1beta/files",
            headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start"},
            timeout=10,
        )
        assert started.headers["x-goog-upload-url"].startswith(f"{url}/mnt/upload/v1beta/files?upload_id=")
        assert app.counters.uploads_finished == 1


# ---------------------------------------------------------------- context caches


def test_cache_create_get_list_update_delete(sim: Simulator) -> None:
    client = genai_client(sim.url)
    text = "A long document worth caching. " * 40
    cache = client.caches.create(
        model=MODEL,
        config={
            "contents": [text],
            "system_instruction": "Answer briefly.",
            "ttl": "300s",
            "display_name": "doc",
        },
    )
    assert cache.name is not None and re.fullmatch(r"cachedContents/[a-z0-9]{12}", cache.name)
    assert cache.model == f"models/{MODEL}" and cache.display_name == "doc"
    assert cache.usage_metadata is not None
    assert cache.usage_metadata.total_token_count == tokens("Answer briefly.", text)
    assert cache.create_time is not None and cache.expire_time is not None
    assert cache.expire_time - cache.create_time == timedelta(seconds=300)
    assert client.caches.get(name=cache.name) == cache
    assert [c.name for c in client.caches.list()] == [cache.name]
    updated = client.caches.update(name=cache.name, config={"ttl": "600s"})
    assert updated.update_time is not None and updated.expire_time is not None
    assert updated.expire_time - updated.update_time == timedelta(seconds=600)
    assert updated.create_time == cache.create_time and updated.update_time > cache.create_time
    masked = httpx.patch(
        f"{sim.url}/v1beta/{cache.name}",
        params={"updateMask": "model"},
        json={"model": "models/x"},
        timeout=10,
    )
    google_error(masked, 400, "INVALID_ARGUMENT")
    client.caches.delete(name=cache.name)
    with pytest.raises(genai_errors.APIError) as gone:
        client.caches.get(name=cache.name)
    assert gone.value.code == 403 and gone.value.message == "CachedContent not found (or permission denied)"
    stats = sim.stats()
    assert stats["caches_created"] == 1 and stats["caches_updated"] == 1 and stats["caches_deleted"] == 1


def test_generate_with_a_cache_reports_its_tokens(sim: Simulator) -> None:
    client = genai_client(sim.url)
    cache = client.caches.create(model=MODEL, config={"contents": ["Cached context. " * 30], "ttl": "300s"})
    cached = cache.usage_metadata.total_token_count
    answer = client.models.generate_content(model=MODEL, contents="hi", config={"cached_content": cache.name})
    usage = answer.usage_metadata
    assert usage.cached_content_token_count == cached
    assert usage.prompt_token_count == tokens("hi") + cached
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    plain = client.models.generate_content(model=MODEL, contents="hi")
    assert plain.usage_metadata.cached_content_token_count is None
    assert plain.text != answer.text  # the cache's contents steer the answer
    streamed = list(
        client.models.generate_content_stream(
            model=MODEL, contents="hi", config={"cached_content": cache.name}
        )
    )
    assert streamed[-1].usage_metadata.cached_content_token_count == cached
    assert "".join(c.text for c in streamed) == answer.text
    counted = httpx.post(
        f"{sim.url}/v1beta/models/{MODEL}:countTokens",
        json={
            "generateContentRequest": {
                "model": f"models/{MODEL}",
                "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "cachedContent": cache.name,
            }
        },
        timeout=10,
    ).json()
    assert counted == {"totalTokens": tokens("hi") + cached, "cachedContentTokenCount": cached}
    assert sim.stats()["cached_content_tokens"] == 2 * cached


def test_unknown_or_misused_cache_is_an_api_error(sim: Simulator) -> None:
    client = genai_client(sim.url)
    with pytest.raises(genai_errors.APIError) as unknown:
        client.models.generate_content(
            model=MODEL, contents="hi", config={"cached_content": "cachedContents/nope"}
        )
    assert unknown.value.code == 403 and unknown.value.status == "PERMISSION_DENIED"
    array = httpx.post(
        f"{sim.url}/v1beta/models/{MODEL}:streamGenerateContent",
        json={"contents": [{"parts": [{"text": "hi"}]}], "cachedContent": "cachedContents/nope"},
        timeout=10,
    )
    assert array.status_code == 403 and array.json()[0]["error"]["status"] == "PERMISSION_DENIED"
    cache = client.caches.create(model=MODEL, config={"contents": ["for one model only"]})
    with pytest.raises(genai_errors.APIError) as other_model:
        client.models.generate_content(
            model="gemini-2.5-pro", contents="hi", config={"cached_content": cache.name}
        )
    assert other_model.value.code == 400 and "has to be the same" in str(other_model.value.message)
    with pytest.raises(genai_errors.APIError) as conflict:
        client.models.generate_content(
            model=MODEL, contents="hi", config={"cached_content": cache.name, "system_instruction": "no"}
        )
    assert conflict.value.code == 400 and "system_instruction" in str(conflict.value.message)
    still_serves(sim)


def test_cache_minimum_size_and_expiry(sim: Simulator) -> None:
    client = genai_client(sim.url)
    sim.configure(cache_min_tokens=1024)
    with pytest.raises(genai_errors.APIError) as small:
        client.caches.create(model=MODEL, config={"contents": ["too small"]})
    assert small.value.code == 400 and "min_total_token_count=1024" in str(small.value.message)
    sim.configure(cache_min_tokens=0)
    brief = client.caches.create(model=MODEL, config={"contents": ["short-lived"], "ttl": "0.4s"})
    assert client.caches.get(name=brief.name).name == brief.name
    time.sleep(0.6)
    with pytest.raises(genai_errors.APIError) as expired:
        client.caches.get(name=brief.name)
    assert expired.value.code == 403
    assert list(client.caches.list()) == []
    with pytest.raises(genai_errors.APIError) as used:
        client.models.generate_content(model=MODEL, contents="hi", config={"cached_content": brief.name})
    assert used.value.code == 403
    both = httpx.post(
        f"{sim.url}/v1beta/cachedContents",
        json={"model": f"models/{MODEL}", "contents": [{"parts": [{"text": "x"}]}], "ttl": "1s",
              "expireTime": "2099-01-01T00:00:00Z"},
        timeout=10,
    )  # fmt: skip
    google_error(both, 400, "INVALID_ARGUMENT")


def test_vertex_cache_create_get_and_generate(sim: Simulator) -> None:
    client = vertex_client(sim)
    cache = client.caches.create(
        model=MODEL, config={"contents": ["Vertex cached words. " * 10], "ttl": "300s"}
    )
    prefix = "projects/demo-project/locations/us-central1/cachedContents/"
    assert cache.name is not None and cache.name.startswith(prefix) and cache.name[len(prefix) :].isdigit()
    assert cache.model == f"projects/demo-project/locations/us-central1/publishers/google/models/{MODEL}"
    assert cache.usage_metadata.total_token_count == tokens("Vertex cached words. " * 10)
    assert client.caches.get(name=cache.name) == cache
    answer = client.models.generate_content(model=MODEL, contents="hi", config={"cached_content": cache.name})
    assert answer.usage_metadata.cached_content_token_count == cache.usage_metadata.total_token_count
    assert list(genai_client(sim.url).caches.list()) == []  # a Vertex project's caches are its own
    missing = httpx.get(f"{sim.url}/v1beta1/{prefix}123", timeout=10)
    assert "cached content metadata for 123" in google_error(missing, 404, "NOT_FOUND")
    other_location = httpx.get(
        f"{sim.url}/v1/{cache.name.replace('us-central1', 'europe-west4')}", timeout=10
    )
    google_error(other_location, 404, "NOT_FOUND")


# ---------------------------------------------------------------- helpers


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


class GeneratedBytes(io.RawIOBase):
    """``size`` deterministic bytes made as they are read (a 1 MiB + 7 block, repeated off its
    alignment with the SDK's 8 MiB chunks); seekable, as the SDK needs to learn the size."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size, self.pos = size, 0
        self.block = hashlib.shake_256(b"knowctl").digest(MB + 7)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: offset, io.SEEK_CUR: self.pos + offset, io.SEEK_END: self.size + offset}[
            whence
        ]
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.pos)
        out, done = memoryview(buffer), 0
        while done < n:
            at = (self.pos + done) % len(self.block)
            take = min(n - done, len(self.block) - at)
            out[done : done + take] = self.block[at : at + take]
            done += take
        self.pos += n
        return n

    def google_sha256(self) -> str:
        digest = hashlib.sha256()
        self.seek(0)
        while piece := self.read(8 * MB):
            digest.update(piece)
        return base64.b64encode(digest.hexdigest().encode()).decode()


class LyingSize(io.BytesIO):
    """A file whose end, as seeking finds it, is ``claimed`` bytes in: it reads on past it."""

    def __init__(self, data: bytes, claimed: int) -> None:
        super().__init__(data)
        self.claimed = claimed

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            return super().seek(self.claimed + offset)
        return super().seek(offset, whence)
