"""Do knowctl's two hand-written clients still earn their place? Each beside well-kept
libraries, in one process, one run, on the same upstream.

1. knowctl.net.http1 (pooled keep-alive HTTP/1.1 on httptools) vs aiohttp (tuned as a
   proxy would be: DummyCookieJar, auto_decompress=False, a connector with a large limit,
   keep-alive) and pyreqwest (Rust reqwest/hyper, default single-threaded runtime), all
   calling a minimal uvicorn app (``upstream`` below, uvloop + httptools, no access log)
   that answers a fixed ~2 KB generateContent JSON, or a few SSE events read chunk by chunk.
   The call: POST of a ~1 KB JSON body with the gateway's headers.
2. knowctl.net.resp.Multiplexer (one pipelined connection for every caller) vs redis-py's
   asyncio client on its default pool (hiredis parser) and valkey-glide, all against one
   private redis-server on loopback: GET of a 2 KB value, EVALSHA of a one-line script.

What is measured: CPU time of this whole process (every thread: the Rust libraries do
their I/O on threads of their own) per call, from getrusage(RUSAGE_SELF), at 1 and at 32
calls in flight, and calls/s of wall clock. The upstream and redis-server run in other
processes, so their CPU is not counted. Rounds alternate the clients (A B C A B C ...) so
that a drift of the machine touches all alike; the table gives medians over the rounds and
their spread, and the load average before and after each case. The deciding figure is CPU
µs per call; "within 1.5x" means a library's median is at most 1.5 times knowctl's.

    python bench/libraries.py [--rounds 7] [--scale 1.0] [--pieces http redis] [--no-save]

Needs the bench extra (``pip install -e '.[bench]'``: aiohttp, pyreqwest, valkey-glide); a
library that is not installed is left out and named in the results.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import hashlib
import importlib.metadata
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from harness import free_port, redis_command, redis_server, service

HERE = Path(__file__).resolve().parent
GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
# The headers the gateway sends upstream (knowctl/daemon/upstream/client.py asks for identity).
HEADERS = {"content-type": "application/json", "x-goog-api-key": "bench-key", "accept-encoding": "identity"}
WITHIN = 1.5
T = TypeVar("T")

VALUE_KEY = "bench:lib:value"
COUNTER_KEY = "bench:lib:counter"
SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
VALUE = b"v" * 2048


# --- the payloads --------------------------------------------------------------------------------
def _padded(make: Callable[[str], dict[str, Any]], size: int) -> bytes:
    """``make(text)`` serialized, with ``text`` grown until the JSON is ``size`` bytes."""
    base = len(orjson.dumps(make("")))
    return orjson.dumps(make("x" * max(0, size - base)))


def request_body() -> bytes:
    return _padded(
        lambda text: {
            "contents": [{"role": "user", "parts": [{"text": f"bench about the tides and the moon {text}"}]}],
            "generationConfig": {"temperature": 0.2, "maxOutputTokens": 256},
        },
        1024,
    )


def _answer(text: str, last: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if last:
        candidate["finishReason"] = "STOP"
    return {
        "candidates": [candidate],
        "usageMetadata": {"promptTokenCount": 256, "candidatesTokenCount": 512, "totalTokenCount": 768},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "bench-response-id",
    }


ANSWER = _padded(lambda text: _answer(text, True), 2048)
EVENTS = [b"data: " + _padded(lambda text, i=i: _answer(text, i == 3), 500) + b"\r\n\r\n" for i in range(4)]
STREAM_BYTES = sum(len(e) for e in EVENTS)


# --- the upstream: a minimal uvicorn app -------------------------------------------------------
def serve_upstream(port: int, gap_ms: float) -> None:
    import uvicorn

    gap = gap_ms / 1000
    answer_head = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())],
    }
    stream_head = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/event-stream")],
    }

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        if scope["path"].endswith(":streamGenerateContent"):
            await send(stream_head)
            for i, event in enumerate(EVENTS):
                if i and gap:  # events apart, as a model's are, so they arrive as separate chunks
                    await asyncio.sleep(gap)
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        else:
            await send(answer_head)
            await send({"type": "http.response.body", "body": ANSWER})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


# --- the clients -----------------------------------------------------------------------------------
Call = Callable[[], Awaitable[int]]  # one call; returns the pieces of body it read


class HttpClient:
    name = ""

    async def open(self, base: str) -> None: ...
    async def close(self) -> None: ...
    async def post(self) -> int:
        raise NotImplementedError

    async def stream(self) -> int:
        raise NotImplementedError


def _check(status: int, size: int, expected: int) -> None:
    if status != 200 or size != expected:
        raise RuntimeError(f"bad answer: status {status}, {size} bytes, expected {expected}")


class Http1(HttpClient):
    name = "knowctl http1"

    async def open(self, base: str) -> None:
        from knowctl.net import http1

        self.http1 = http1
        self.pool = http1.Pool(max_connections=256, connect_timeout=5, timeout=60)
        self.origin = http1.Origin.parse(base)
        self.body = request_body()

    async def close(self) -> None:
        await self.pool.close()

    async def post(self) -> int:
        async with self.pool.request("POST", self.origin, GENERATE, HEADERS, self.body) as response:
            data = await response.read()
        _check(response.status, len(data), len(ANSWER))
        return 1

    async def stream(self) -> int:
        pieces = size = 0
        async with self.pool.request("POST", self.origin, STREAM, HEADERS, self.body) as response:
            async for piece in response.chunks():
                pieces += 1
                size += len(piece)
        _check(response.status, size, STREAM_BYTES)
        return pieces


class Aiohttp(HttpClient):
    name = "aiohttp"

    async def open(self, base: str) -> None:
        import aiohttp
        import yarl

        connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=60, connect=5),
            trust_env=False,
        )
        # URLs parsed once: the library's best case (a proxy builds one per call).
        self.post_url, self.stream_url = yarl.URL(base + GENERATE), yarl.URL(base + STREAM)
        self.body = request_body()

    async def close(self) -> None:
        await self.session.close()

    async def post(self) -> int:
        async with self.session.post(self.post_url, data=self.body, headers=HEADERS) as response:
            data = await response.read()
        _check(response.status, len(data), len(ANSWER))
        return 1

    async def stream(self) -> int:
        pieces = size = 0
        async with self.session.post(self.stream_url, data=self.body, headers=HEADERS) as response:
            async for piece in response.content.iter_any():
                pieces += 1
                size += len(piece)
        _check(response.status, size, STREAM_BYTES)
        return pieces


class Pyreqwest(HttpClient):
    name = "pyreqwest"

    async def open(self, base: str) -> None:
        from pyreqwest.client import ClientBuilder
        from pyreqwest.http import Url

        self.client = (
            ClientBuilder()
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .follow_redirects(False)
            .referer(False)
            .max_connections(None)
            .pool_max_idle_per_host(1024)
            .timeout(dt.timedelta(seconds=60))
            .connect_timeout(dt.timedelta(seconds=5))
            .build()
        )
        self.post_url, self.stream_url = Url(base + GENERATE), Url(base + STREAM)
        self.body = request_body()

    async def close(self) -> None:
        await self.client.close()

    async def post(self) -> int:
        response = await self.client.post(self.post_url).headers(HEADERS).body_bytes(self.body).build().send()
        data = await response.bytes()  # a buffer over Rust memory, which a transport can write as is
        _check(response.status, len(data), len(ANSWER))
        return 1

    async def stream(self) -> int:
        pieces = size = 0
        request = self.client.post(self.stream_url).headers(HEADERS).body_bytes(self.body).build_streamed()
        async with request as response:
            reader = response.body_reader
            while (piece := await reader.read_chunk()) is not None:
                pieces += 1
                size += len(piece)
        _check(response.status, size, STREAM_BYTES)
        return pieces


class RedisClient:
    name = ""

    async def open(self, host: str, port: int) -> None: ...
    async def close(self) -> None: ...
    async def get(self) -> int:
        raise NotImplementedError

    async def evalsha(self) -> int:
        raise NotImplementedError


def _check_value(value: Any) -> int:
    if value != VALUE:
        raise RuntimeError(f"GET answered {value!r:.60}")
    return 1


def _check_count(value: Any) -> int:
    if not isinstance(value, int):
        raise RuntimeError(f"EVALSHA answered {value!r:.60}")
    return 1


class Multiplexer(RedisClient):
    name = "knowctl resp"

    async def open(self, host: str, port: int) -> None:
        from knowctl.net.resp import Address
        from knowctl.net.resp import Multiplexer as Mux

        self.mux = Mux(Address(host, port), timeout=2.0)

    async def close(self) -> None:
        await self.mux.close()

    async def get(self) -> int:
        return _check_value(await self.mux.execute("GET", VALUE_KEY))

    async def evalsha(self) -> int:  # the store's own call (NOSCRIPT falls back to SCRIPT LOAD)
        return _check_count(await self.mux.evalsha(SCRIPT_SHA, SCRIPT, [COUNTER_KEY], [1]))


class RedisPy(RedisClient):
    name = "redis-py"

    async def open(self, host: str, port: int) -> None:
        from redis.asyncio import Redis

        self.redis = Redis(host=host, port=port)  # the default pool

    async def close(self) -> None:
        await self.redis.aclose()

    async def get(self) -> int:
        return _check_value(await self.redis.get(VALUE_KEY))

    async def evalsha(self) -> int:  # the bare command: cheaper than a Script object's fallback
        return _check_count(await self.redis.evalsha(SCRIPT_SHA, 1, COUNTER_KEY, 1))


class Glide(RedisClient):
    name = "valkey-glide"

    async def open(self, host: str, port: int) -> None:
        from glide import GlideClient, GlideClientConfiguration, NodeAddress, Script

        config = GlideClientConfiguration([NodeAddress(host, port)], request_timeout=2000)
        self.client = await GlideClient.create(config)
        self.script = Script(SCRIPT)

    async def close(self) -> None:
        await self.client.close()

    async def get(self) -> int:
        return _check_value(await self.client.get(VALUE_KEY))

    async def evalsha(self) -> int:  # its way to run a script: EVALSHA, loading it on NOSCRIPT
        return _check_count(await self.client.invoke_script(self.script, keys=[COUNTER_KEY], args=["1"]))


HTTP_CLIENTS: list[tuple[type[HttpClient], str | None]] = [
    (Http1, None),
    (Aiohttp, "aiohttp"),
    (Pyreqwest, "pyreqwest"),
]
REDIS_CLIENTS: list[tuple[type[RedisClient], str | None]] = [
    (Multiplexer, None),
    (RedisPy, "redis"),
    (Glide, "valkey-glide"),
]


def available(clients: list[tuple[type[T], str | None]], missing: list[str]) -> list[type[T]]:
    """The clients whose library imports here; the others are named in ``missing``."""
    out = []
    for cls, dist in clients:
        try:
            if dist is not None:
                importlib.metadata.version(dist)
                __import__({"valkey-glide": "glide"}.get(dist, dist))
            out.append(cls)
        except Exception as exc:
            missing.append(f"{dist}: {type(exc).__name__}: {exc}")
    return out


# --- measuring ---------------------------------------------------------------------------------------
@dataclass
class Sample:
    cpu_us: float  # the whole process, per call
    loop_cpu_us: float  # the event loop's thread alone, per call
    rps: float
    pieces: float  # body pieces read per call


@dataclass
class Case:
    piece: str
    name: str
    inflight: int
    calls: int
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    load_before: str = ""
    load_after: str = ""


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def block(call: Call, calls: int, inflight: int) -> Sample:
    """``calls`` calls, ``inflight`` at a time (one task each, all started together)."""
    per_task = max(1, calls // inflight)

    async def task() -> int:
        pieces = 0
        for _ in range(per_task):
            pieces += await call()
        return pieces

    gc.collect()
    cpu0, loop0, wall0 = process_cpu(), time.thread_time(), time.perf_counter()
    pieces = sum(await asyncio.gather(*(task() for _ in range(inflight))))
    wall, cpu, loop_cpu = time.perf_counter() - wall0, process_cpu() - cpu0, time.thread_time() - loop0
    n = per_task * inflight
    return Sample(cpu / n * 1e6, loop_cpu / n * 1e6, n / wall, pieces / n)


async def run_case(case: Case, calls: dict[str, Call], rounds: int) -> None:
    case.load_before = loadavg()
    warm = max(64, case.calls // 10)
    for call in calls.values():  # opens the connections the load needs, fills caches
        await block(call, warm, case.inflight)
    case.samples = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            case.samples[name].append(await block(call, case.calls, case.inflight))
    case.load_after = loadavg()
    print(
        f"[{case.piece} {case.name}, {case.inflight} in flight] load {case.load_before} -> {case.load_after}"
    )
    for name, samples in case.samples.items():
        cpu = [s.cpu_us for s in samples]
        print(
            f"  {name:14} {statistics.median(cpu):7.1f} µs CPU/call ({min(cpu):.1f}-{max(cpu):.1f}), "
            f"{statistics.median(s.rps for s in samples):8.0f} calls/s",
            flush=True,
        )


async def idle_cpu_ms_per_s(seconds: float = 1.0) -> float:
    """CPU the process burns while every client sits idle (a busy-polling background thread
    would be charged to every case)."""
    cpu0 = process_cpu()
    await asyncio.sleep(seconds)
    return (process_cpu() - cpu0) / seconds * 1000


async def harness_floor() -> dict[int, float]:
    """What ``block`` itself costs per call (a call that does nothing), at each load."""

    async def nothing() -> int:
        return 1

    return {
        n: statistics.median([(await block(nothing, 20000, n)).cpu_us for _ in range(3)]) for n in (1, 32)
    }


async def http_piece(
    base: str, classes: list[type[HttpClient]], args: argparse.Namespace
) -> tuple[list[Case], float]:
    clients = [cls() for cls in classes]
    for client in clients:
        await client.open(base)
    try:
        idle = await idle_cpu_ms_per_s()
        cases = []
        for what, inflight, calls in (
            ("POST, 2 KB JSON answer", 1, 2000),
            ("POST, 2 KB JSON answer", 32, 4000),
            ("POST, SSE answer (4 events)", 1, 400),
            ("POST, SSE answer (4 events)", 32, 2000),
        ):
            case = Case("http1", what, inflight, max(inflight, int(calls * args.scale)))
            method = "stream" if "SSE" in what else "post"
            await run_case(case, {c.name: getattr(c, method) for c in clients}, args.rounds)
            cases.append(case)
        return cases, idle
    finally:
        for client in clients:
            await client.close()


async def redis_piece(
    url: str, classes: list[type[RedisClient]], args: argparse.Namespace
) -> tuple[list[Case], float]:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    redis_command(url, "SET", VALUE_KEY, VALUE)
    redis_command(url, "SCRIPT", "LOAD", SCRIPT)
    clients = [cls() for cls in classes]
    for client in clients:
        await client.open(host, int(port))
    try:
        idle = await idle_cpu_ms_per_s()
        cases = []
        for what, inflight, calls in (
            ("GET 2 KB", 1, 5000),
            ("GET 2 KB", 32, 20000),
            ("EVALSHA", 1, 5000),
            ("EVALSHA", 32, 20000),
        ):
            case = Case("resp", what, inflight, max(inflight, int(calls * args.scale)))
            method = "get" if what.startswith("GET") else "evalsha"
            await run_case(case, {c.name: getattr(c, method) for c in clients}, args.rounds)
            cases.append(case)
        return cases, idle
    finally:
        for client in clients:
            await client.close()


# --- the report ----------------------------------------------------------------------------------------
def spread(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def table(cases: list[Case]) -> tuple[list[str], list[str]]:
    """The markdown table, and one verdict line per case."""
    lines = [
        "| piece | case | in flight | client | CPU µs/call, median (min-max) | x knowctl (paired, min-max) "
        "| loop thread µs/call | calls/s, median (min-max) | pieces/call | within 1.5x | load before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for case in cases:
        names = list(case.samples)
        own = case.samples[names[0]]
        own_cpu = statistics.median(s.cpu_us for s in own)
        within = []
        for name in names:
            samples = case.samples[name]
            cpu = [s.cpu_us for s in samples]
            ratio = statistics.median(cpu) / own_cpu
            paired = [s.cpu_us / o.cpu_us for s, o in zip(samples, own, strict=True)]
            ok = ratio <= WITHIN
            if name != names[0]:
                within.append(f"{name} {ratio:.2f}x ({'within' if ok else 'not within'})")
            lines.append(
                f"| {case.piece} | {case.name} | {case.inflight} | {name} | {spread(cpu)} | "
                + (
                    "1.00x (ours)"
                    if name == names[0]
                    else f"{ratio:.2f}x ({min(paired):.2f}-{max(paired):.2f})"
                )
                + f" | {statistics.median(s.loop_cpu_us for s in samples):.1f} | {spread([s.rps for s in samples], 0)} | "
                f"{statistics.median(s.pieces for s in samples):.2f} | "
                + ("-" if name == names[0] else ("yes" if ok else "no"))
                + f" | {case.load_before} -> {case.load_after} |"
            )
        verdicts.append(
            f"- {case.piece}, {case.name}, {case.inflight} in flight: knowctl {own_cpu:.1f} µs; "
            + "; ".join(within)
        )
    return lines, verdicts


def versions() -> str:
    out = []
    for dist in (
        "aiohttp",
        "pyreqwest",
        "redis",
        "hiredis",
        "valkey-glide",
        "httptools",
        "uvloop",
        "uvicorn",
    ):
        try:
            out.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    return ", ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="rounds of every client per case")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the calls per round")
    parser.add_argument("--pieces", nargs="+", choices=("http", "redis"), default=["http", "redis"])
    parser.add_argument(
        "--event-gap-ms", type=float, default=1.0, help="pause between the upstream's SSE events"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.event_gap_ms)
        return

    import uvloop

    missing: list[str] = []
    http_classes, redis_classes = available(HTTP_CLIENTS, missing), available(REDIS_CLIENTS, missing)
    started = loadavg()
    cases: list[Case] = []
    idle: dict[str, float] = {}
    if "http" in args.pieces:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve-upstream",
            str(port),
            "--event-gap-ms",
            str(args.event_gap_ms),
        ]
        with service("upstream", argv, f"{url}/health", url):
            found, idle["http"] = uvloop.run(http_piece(url, http_classes, args))
            cases += found
    if "redis" in args.pieces:
        with redis_server() as store:
            found, idle["redis"] = uvloop.run(redis_piece(store, redis_classes, args))
            cases += found

    floor = uvloop.run(harness_floor())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    lines, verdicts = table(cases)
    command = "python bench/libraries.py " + shlex.join(sys.argv[1:])
    report = [
        f"# knowctl's clients beside libraries, {stamp}",
        "",
        f"`{command.strip()}`",
        "",
        f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, uvloop; "
        f"{args.rounds} rounds per case, clients alternating; load average {started} at the start, "
        f"{loadavg()} at the end.",
        "",
        f"Versions: {versions()}.",
        "",
        "CPU is the whole client process (all threads) per call; the loop thread column is the "
        "event loop's thread alone (the rest ran on the libraries' own threads). The ratio is of "
        "medians; in brackets, the range of the per-round ratios (each round ran all clients back "
        "to back). Within 1.5x: the library's median CPU per call is at most 1.5 times knowctl's.",
        "",
        *lines,
        "",
        "Verdicts:",
        "",
        *verdicts,
        "",
        "Idle CPU of the process with every client open: "
        + ", ".join(f"{k} {v:.2f} ms/s" for k, v in idle.items())
        + "; the harness's own CPU per call (a call that does nothing): "
        + ", ".join(f"{v:.2f} µs at {n} in flight" for n, v in floor.items())
        + ".",
    ]
    if missing:
        report += ["", "Left out (not installed or not importable): " + "; ".join(missing) + "."]
    text = "\n".join(report) + "\n"
    print("\n" + text)
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"libraries-{stamp}.md"
        path.write_text(text)
        print(f"saved {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
