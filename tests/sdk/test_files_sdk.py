"""The Gemini API's Files through the gateway, with the official google-genai client: a
resumable upload streamed through (memory flat however large), continued on another daemon,
and every file its uploader's alone."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from google import genai
from google.genai import errors, types

from tests.gateway.test_gateway_security import keys_env, new_key
from tests.support.fixtures import Gateway, Simulator, start_gateway
from tests.support.sdk import status_of

MODEL = "files-model"
MB = 1024 * 1024


def _gateway_env() -> dict[str, str]:
    return keys_env(KNOWCTL_USER_LIMITS="none", KNOWCTL_QUOTA_RPM="100000", KNOWCTL_QUOTA_TPM="100000000")


@pytest.fixture(scope="module")
def daemons(
    simulator_process: Simulator, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway, int]]:
    """Two gateways on one Redis (the second's pid, for its memory)."""
    first, one = start_gateway(
        tmp_path_factory.mktemp("files-1"),
        "--upstream",
        simulator_process.url,
        "--store",
        redis_url,
        env=_gateway_env(),
    )
    second, two = start_gateway(
        tmp_path_factory.mktemp("files-2"),
        "--upstream",
        simulator_process.url,
        "--store",
        redis_url,
        env=_gateway_env(),
    )
    with one, two as proc:
        yield first, second, proc.pid


@pytest.fixture
def gateway(daemons: tuple[Gateway, Gateway, int]) -> Gateway:
    return daemons[0]


def client(gateway: Gateway, key: str) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=gateway.url))


def upload(c: genai.Client, data: bytes | io.IOBase, name: str = "notes") -> types.File:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    return c.files.upload(file=source, config={"mime_type": "application/octet-stream", "display_name": name})


def test_an_upload_is_its_uploaders_alone(gateway: Gateway, simulator: Simulator) -> None:
    owner, stranger = client(gateway, new_key(gateway)), client(gateway, new_key(gateway))
    data = os.urandom(3 * MB)
    made = upload(owner, data)
    assert made.name is not None and made.size_bytes == len(data) and made.state == "ACTIVE"
    assert owner.files.get(name=made.name).size_bytes == len(data)
    assert made.name in [f.name for f in owner.files.list()]
    theirs = upload(stranger, b"the stranger's own")
    assert [f.name for f in stranger.files.list()] == [theirs.name]  # nothing of the owner's
    assert made.name not in [f.name for f in stranger.files.list()]
    assert status_of(lambda: stranger.files.get(name=made.name)) == 403
    assert status_of(lambda: stranger.files.delete(name=made.name)) == 403
    assert owner.files.get(name=made.name).name == made.name  # the stranger deleted nothing
    owner.files.delete(name=made.name)
    assert status_of(lambda: owner.files.get(name=made.name)) == 403


def test_a_generation_naming_anothers_file_never_leaves(gateway: Gateway, simulator: Simulator) -> None:
    owner, stranger = client(gateway, new_key(gateway)), client(gateway, new_key(gateway))
    made = upload(owner, b"a small document")
    assert made.uri is not None
    part = types.Part.from_uri(file_uri=made.uri, mime_type="text/plain")
    before = simulator.stats()["served"]
    assert (
        status_of(lambda: stranger.models.generate_content(model=MODEL, contents=[part, "what is it?"]))
        == 403
    )
    assert simulator.stats()["served"] == before  # refused before it went upstream
    answer = owner.models.generate_content(model=MODEL, contents=[part, "what is it?"])
    assert answer.text and simulator.stats()["served"] == before + 1


def test_an_upload_started_on_one_daemon_continues_on_the_other(
    daemons: tuple[Gateway, Gateway, int], simulator: Simulator
) -> None:
    first, second, _ = daemons
    key = new_key(first)
    data = os.urandom(2 * MB)
    started = httpx.post(
        f"{first.url}/upload/v1beta/files",
        headers={
            "x-goog-api-key": key,
            "x-goog-upload-protocol": "resumable",
            "x-goog-upload-command": "start",
            "x-goog-upload-header-content-length": str(len(data)),
            "x-goog-upload-header-content-type": "application/octet-stream",
        },
        json={"file": {"displayName": "halves"}},
        timeout=10,
    )
    assert started.status_code == 200, started.text
    url = started.headers["x-goog-upload-url"]
    assert url.startswith(first.url + "/upload/v1beta/files?upload_id=")  # the gateway's, not Google's
    elsewhere = second.url + url[len(first.url) :]
    half = len(data) // 2
    sent = httpx.post(
        url,
        headers={"x-goog-api-key": key, "x-goog-upload-command": "upload", "x-goog-upload-offset": "0"},
        content=data[:half],
        timeout=10,
    )
    assert sent.status_code == 200 and sent.headers["x-goog-upload-status"] == "active", sent.text
    stranger = httpx.post(
        elsewhere,
        headers={
            "x-goog-api-key": new_key(first),
            "x-goog-upload-command": "upload, finalize",
            "x-goog-upload-offset": str(half),
        },
        content=data[half:],
        timeout=10,
    )
    assert stranger.status_code == 404  # another tenant cannot use the upload's URL
    done = httpx.post(
        elsewhere,
        headers={
            "x-goog-api-key": key,
            "x-goog-upload-command": "upload, finalize",
            "x-goog-upload-offset": str(half),
        },
        content=data[half:],
        timeout=10,
    )
    assert done.status_code == 200 and done.headers["x-goog-upload-status"] == "final", done.text
    name = done.json()["file"]["name"]
    assert int(done.json()["file"]["sizeBytes"]) == len(data)
    assert client(first, key).files.get(name=name).name == name  # owned, on every daemon


class _Generated(io.RawIOBase):
    """``size`` bytes made as they are read: the test holds no large buffer either."""

    def __init__(self, size: int) -> None:
        self._left = size
        self.size = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._left)
        buffer[:n] = b"x" * n
        self._left -= n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        # The SDK measures the size by seeking to the end and back.
        if whence == 2 and offset == 0:
            self._left = 0
        elif whence == 0:
            self._left = self.size - offset
        else:
            raise io.UnsupportedOperation("seek")
        return self.size - self._left

    def tell(self) -> int:
        return self.size - self._left

    def seekable(self) -> bool:
        return True


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_large_upload_keeps_the_daemons_memory_flat(daemons: tuple[Gateway, Gateway, int]) -> None:
    _, second, pid = daemons
    size = 256 * MB
    peak = before = _rss(pid)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        made = upload(client(second, new_key(second)), _Generated(size), "large")  # type: ignore[arg-type]
    finally:
        stop.set()
        sampler.join()
    assert made.size_bytes == size
    # Chunks of 8 MiB pass through; the daemon holds at most a few of them at once.
    assert peak - before < 48 * MB, (
        f"RSS grew by {(peak - before) / MB:.0f} MB during a {size // MB} MB upload"
    )


def _start(gateway: Gateway, key: str, size: int) -> str:
    started = httpx.post(
        f"{gateway.url}/upload/v1beta/files",
        headers={
            "x-goog-api-key": key,
            "x-goog-upload-protocol": "resumable",
            "x-goog-upload-command": "start",
            "x-goog-upload-header-content-length": str(size),
        },
        json={"file": {}},
        timeout=10,
    )
    assert started.status_code == 200, started.text
    return started.headers["x-goog-upload-url"]


def _raw(url: str, key: str, command: str, declared: int, body: bytes) -> bytes:
    """A chunk sent by hand: ``declared`` bytes said, ``body`` sent, then the socket closed;
    whatever came back before."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=5) as raw:
        raw.sendall(
            (
                f"POST {parts.path}?{parts.query} HTTP/1.1\r\nhost: {parts.netloc}\r\nx-goog-api-key: {key}\r\n"
                f"x-goog-upload-command: {command}\r\nx-goog-upload-offset: 0\r\ncontent-length: {declared}\r\n\r\n"
            ).encode()
            + body
        )
        raw.settimeout(0.5)
        try:
            return raw.recv(65536)
        except TimeoutError:
            return b""


def test_bad_uploads_get_clear_errors_and_the_daemon_stays_healthy(gateway: Gateway) -> None:
    key = new_key(gateway)
    headers = {"x-goog-api-key": key}
    url = _start(gateway, key, 1000)
    wrong = httpx.post(
        url,
        headers={**headers, "x-goog-upload-command": "upload", "x-goog-upload-offset": "7"},
        content=b"a" * 10,
    )
    assert wrong.status_code == 400 and "error" in wrong.json()
    unknown = httpx.post(
        f"{gateway.url}/upload/v1beta/files?upload_id=made-up&upload_protocol=resumable",
        headers={**headers, "x-goog-upload-command": "upload", "x-goog-upload-offset": "0"},
        content=b"a",
    )
    assert unknown.status_code == 404 and unknown.headers["x-goog-upload-status"] == "final"
    # A chunk that says it is larger than the body limit: refused before a byte of it is read.
    too_big = _raw(url, key, "upload", 64 * MB, b"")
    assert too_big.startswith(b"HTTP/1.1 413"), too_big[:200]
    plain = httpx.post(f"{gateway.url}/upload/v1beta/files", headers=headers, content=b"raw bytes")
    assert plain.status_code == 400 and "resumable" in plain.json()["error"]["message"]
    # A chunk cut short: the client says 1000 bytes, sends 300 and goes.
    _raw(url, key, "upload, finalize", 1000, b"b" * 300)
    time.sleep(0.3)
    query = httpx.post(url, headers={**headers, "x-goog-upload-command": "query"}, content=b"")
    assert query.status_code == 200 and int(query.headers["x-goog-upload-size-received"]) <= 300
    assert httpx.get(f"{gateway.url}/api/health").status_code == 200


def test_a_callers_upload_bytes_are_bounded_per_day(
    simulator_process: Simulator, redis_url: str, tmp_path: Path
) -> None:
    handle, process = start_gateway(
        tmp_path,
        "--upstream",
        simulator_process.url,
        "--store",
        redis_url,
        env={**_gateway_env(), "KNOWCTL_UPLOAD_BYTES_PER_DAY": str(3 * MB)},
    )
    with process:
        mine, theirs = client(handle, new_key(handle)), client(handle, new_key(handle))
        assert upload(mine, os.urandom(2 * MB)).size_bytes == 2 * MB
        with pytest.raises(errors.APIError) as refused:
            upload(mine, os.urandom(2 * MB))
        assert refused.value.code == 429 and "24 hours" in str(refused.value)
        assert int(refused.value.response.headers["retry-after"]) > 0  # type: ignore[union-attr]
        assert upload(theirs, os.urandom(2 * MB)).size_bytes == 2 * MB  # a window per caller
