"""Small asyncio clients for what wrk cannot measure: time to first byte of streams, filling
the cache with N distinct answers, and ops endpoint latencies. Raw sockets with keep-alive,
so the client adds as little as possible to what it measures.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import orjson

_counter = itertools.count()


def generate_body(text: str | None = None) -> bytes:
    prompt = text or f"bench {uuid.uuid4().hex} {next(_counter)} about the tides and the moon"
    return orjson.dumps({"contents": [{"role": "user", "parts": [{"text": prompt}]}]})


class Connection:
    """One keep-alive HTTP/1.1 connection; answers are read by Content-Length or chunked."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()

    def _send(self, method: str, path: str, body: bytes) -> None:
        assert self.writer is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)

    async def _head(self) -> tuple[int, dict[str, str]]:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _chunks(self) -> list[bytes]:
        """A chunked body, chunk by chunk (the first arrives before the rest is sent)."""
        assert self.reader is not None
        out = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return out
            out.append(data[:-2])

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        assert self.reader is not None
        self._send(method, path, body)
        status, headers = await self._head()
        if headers.get("transfer-encoding") == "chunked":
            return status, b"".join(await self._chunks())
        return status, await self.reader.readexactly(int(headers.get("content-length", "0")))

    async def first_event(self, path: str, body: bytes) -> tuple[float, float, int]:
        """Send a streaming call: (seconds to the response head, seconds to the first SSE
        event, status); reads the rest of the stream so the connection can be reused."""
        assert self.reader is not None
        started = time.perf_counter()
        self._send("POST", path, body)
        status, headers = await self._head()
        head_at = time.perf_counter()
        if headers.get("transfer-encoding") != "chunked":
            await self.reader.readexactly(int(headers.get("content-length", "0")))
            return head_at - started, time.perf_counter() - started, status
        size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
        first_at = time.perf_counter()
        await self.reader.readexactly(size + 2)
        if size:
            await self._chunks()
        return head_at - started, first_at - started, status


Times = dict[str, list[float]]  # "head", "first_event" (seconds), "errors" (one count)


def _times() -> Times:
    return {"head": [], "first_event": [], "errors": [0.0]}


async def _streams(conn: Connection, path: str, into: Times, remaining: Iterator[int], count: int) -> None:
    """Streaming calls with distinct prompts on ``conn`` while ``remaining`` is under ``count``
    (one counter shared by the connections of a run)."""
    while next(remaining) < count:
        head, first, status = await conn.first_event(path, generate_body())
        into["errors"][0] += status != 200
        into["head"].append(head)
        into["first_event"].append(first)


async def ttfb(url: str, path: str, streams: int, concurrency: int) -> Times:
    """Time to the head and to the first event of ``streams`` streaming calls."""
    return (await ttfb_pair(url, None, path, streams, concurrency, per_connection=streams))[0]


async def ttfb_pair(
    first_url: str,
    second_url: str | None,
    path: str,
    streams: int,
    concurrency: int,
    per_connection: int = 50,
) -> tuple[Times, Times]:
    """``ttfb`` of both URLs in alternating batches (``per_connection`` streams on each of
    ``concurrency`` connections, kept open throughout), so that a drift of the machine's
    state during the measurement touches both alike. Each batch starts its connections
    together: the batches are long, so that the case measures streams that start on their
    own, not bursts. Without ``second_url``, only the first is measured."""
    batch = per_connection * concurrency
    urls = [first_url] if second_url is None else [first_url, second_url]
    results = [_times(), _times()]
    pools = [[Connection(url) for _ in range(concurrency)] for url in urls]
    for conn in itertools.chain(*pools):
        await conn.open()
    try:
        for start in range(0, streams, batch):
            count = min(batch, streams - start)
            for conns, into in zip(pools, results, strict=False):
                remaining = itertools.count()
                await asyncio.gather(*(_streams(conn, path, into, remaining, count) for conn in conns))
    finally:
        for conn in itertools.chain(*pools):
            await conn.close()
    return results[0], results[1]


async def fill(url: str, path: str, count: int, concurrency: int = 32) -> int:
    """Send ``count`` distinct generation calls; return how many answered 200."""
    ok = 0
    remaining = itertools.count()

    async def worker() -> None:
        nonlocal ok
        conn = Connection(url)
        await conn.open()
        try:
            while next(remaining) < count:
                status, _ = await conn.request("POST", path, generate_body())
                ok += status == 200
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


async def probe(url: str, paths: list[str], rounds: int, pause_s: float = 0.02) -> dict[str, list[float]]:
    """Latency of each GET in ``paths``, ``rounds`` times, one at a time on one connection."""
    conn = Connection(url)
    await conn.open()
    times: dict[str, list[float]] = {p: [] for p in paths}
    try:
        for _ in range(rounds):
            for path in paths:
                started = time.perf_counter()
                status, _ = await conn.request("GET", path)
                elapsed = time.perf_counter() - started
                if status != 200:
                    raise RuntimeError(f"GET {path} answered {status}")
                times[path].append(elapsed)
            await asyncio.sleep(pause_s)
    finally:
        await conn.close()
    return times


MIB = 1024 * 1024
UPLOAD_CHUNK = 8 * MIB  # what google-genai sends per request (_api_client.CHUNK_SIZE)


def upload_mb_s(base_url: str, size: int) -> float:
    """One resumable upload of ``size`` bytes in the SDK's chunks, as the SDK makes it
    (start, then upload / upload, finalize at the URL the start named); its MB/s."""
    import httpx

    chunk = b"k" * UPLOAD_CHUNK
    started = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        start = client.post(
            f"{base_url}/upload/v1beta/files",
            headers={
                "x-goog-upload-protocol": "resumable",
                "x-goog-upload-command": "start",
                "x-goog-upload-header-content-length": str(size),
                "x-goog-upload-header-content-type": "application/octet-stream",
                "x-goog-api-key": "bench",
            },
            json={"file": {"display_name": "bench"}},
        )
        start.raise_for_status()
        url = start.headers["x-goog-upload-url"]
        offset = 0
        while offset < size:
            piece = chunk[: min(UPLOAD_CHUNK, size - offset)]
            last = offset + len(piece) >= size
            answer = client.post(
                url,
                headers={
                    "x-goog-upload-command": "upload, finalize" if last else "upload",
                    "x-goog-upload-offset": str(offset),
                },
                content=piece,
            )
            answer.raise_for_status()
            offset += len(piece)
    return size / 1e6 / (time.perf_counter() - started)


LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


async def live_turns(base_url: str, sessions: int, turns: int) -> tuple[list[float], list[float]]:
    """``sessions`` Live API sessions one after another, ``turns`` text turns each, as
    google-genai sends them: each session's setup time (connect to setupComplete) and each
    turn's time (sent to turnComplete), in seconds."""
    from websockets.asyncio.client import connect

    url = base_url.replace("http://", "ws://") + LIVE_PATH
    setup = orjson.dumps({"setup": {"model": "models/gemini-live-bench"}})
    turn = orjson.dumps(
        {
            "client_content": {
                "turns": [{"role": "user", "parts": [{"text": "hello live"}]}],
                "turnComplete": True,
            }
        }
    )
    opened: list[float] = []
    answered: list[float] = []
    for _ in range(sessions):
        started = time.perf_counter()
        async with connect(url, additional_headers={"x-goog-api-key": "bench"}, compression=None) as ws:
            await ws.send(setup)
            await ws.recv()  # setupComplete
            opened.append(time.perf_counter() - started)
            for _ in range(turns):
                sent = time.perf_counter()
                await ws.send(turn)
                while b"turnComplete" not in (await ws.recv(decode=False)):
                    pass
                answered.append(time.perf_counter() - sent)
    return opened, answered
