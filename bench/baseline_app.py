"""Bare baselines: what a Python ASGI app on the gateway's server can physically do.

- the cache-hit baseline (default): read the request body, do one Redis GET and answer with
  the value (the same answer bytes the gateway serves from its cache);
- ``--upstream URL``: a bare pass-through proxy, the floor of the streaming case. It reads
  the body, makes ``--round-trips`` Redis round trips (each one pipelined pair of GETs, as
  the gateway's limit check, cache lookup and quota reservation leave together) and relays the upstream's
  answer as it arrives, with no checks, no cache and no quota.

Both run on uvicorn with the gateway's settings (uvloop, httptools, no access log) and the
gateway's own clients: knowctl's pipelined Redis connection and its HTTP/1.1 pool. With
``--client redis-py`` the GET goes through redis-py's connection pool instead, the standard
client (and the one the store used before knowctl's own).

    python bench/baseline_app.py --port 9000 --redis redis://127.0.0.1:6379/0 [--client redis-py]
    python bench/baseline_app.py --port 9001 --redis ... --upstream http://127.0.0.1:8000 --round-trips 1
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn
from redis.asyncio import BlockingConnectionPool, Redis

from knowctl.net import http1
from knowctl.net.resp import Multiplexer, address_for

ANSWER_KEY = "bench:answer"
FLOOR_KEYS = ("bench:floor:a", "bench:floor:b")


class Baseline:
    def __init__(self, redis_url: str, upstream: str | None, round_trips: int, client: str) -> None:
        address = address_for(redis_url)
        if address is None:
            raise SystemExit(f"baseline: unsupported Redis URL {redis_url}")
        self.redis = Multiplexer(address, timeout=2.0)
        self.pooled: Redis | None = None
        if client == "redis-py":
            self.pooled = Redis.from_pool(BlockingConnectionPool.from_url(redis_url, max_connections=64))
        self.origin = http1.Origin.parse(upstream) if upstream else None
        self.round_trips = round_trips
        self.pool: http1.Pool | None = None  # made on first use, inside the server's loop

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:  # read the whole body, as the gateway does
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"] == "/health":
            await answer(send, b"ok")
        elif self.origin is None:
            get = (
                self.pooled.get(ANSWER_KEY)
                if self.pooled is not None
                else self.redis.execute("GET", ANSWER_KEY)
            )
            await answer(send, await get or b"{}")
        else:
            await self.relay(scope, body, send)

    async def relay(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        assert self.origin is not None
        for _ in range(self.round_trips):
            await asyncio.gather(*(self.redis.execute("GET", key) for key in FLOOR_KEYS))
        if self.pool is None:
            self.pool = http1.Pool(max_connections=256, connect_timeout=5, timeout=60)
        query = scope["query_string"].decode()
        target = scope["raw_path"].decode() + (f"?{query}" if query else "")
        headers = {"content-type": "application/json"}
        async with self.pool.request("POST", self.origin, target, headers, body) as response:
            content_type = response.header(b"content-type") or b"application/json"
            start = {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(b"content-type", content_type)],
            }
            await send(start)
            async for piece in response.chunks():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


async def answer(send: Any, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--upstream", help="relay calls to this URL (the pass-through floor)")
    parser.add_argument("--round-trips", type=int, default=0, help="Redis round trips before relaying")
    parser.add_argument("--client", choices=("pipelined", "redis-py"), default="pipelined")
    args = parser.parse_args()
    app = Baseline(args.redis, args.upstream, args.round_trips, args.client)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
    )


if __name__ == "__main__":
    main()
