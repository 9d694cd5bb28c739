"""The bare baseline of the cache-hit case: a raw ASGI app that reads the request body, does
one Redis GET and answers with the value (the same answer bytes the gateway serves from its
cache). Run by uvicorn with the gateway's settings (uvloop, httptools, no access log), and
the same Redis client and pool kind as knowctl's store.

    python bench/baseline_app.py --port 9000 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from redis.asyncio import BlockingConnectionPool, Redis

ANSWER_KEY = "bench:answer"


class Baseline:
    def __init__(self, redis_url: str) -> None:
        pool = BlockingConnectionPool.from_url(redis_url, max_connections=64, timeout=0.25)
        self.redis = Redis.from_pool(pool)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # read the whole body, as the gateway does
            message = await receive()
            more = message.get("more_body", False)
        body = b"ok" if scope["path"] == "/health" else await self.redis.get(ANSWER_KEY) or b"{}"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    uvicorn.run(Baseline(args.redis), host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                lifespan="off", access_log=False, log_level="warning", server_header=False)


if __name__ == "__main__":
    main()
