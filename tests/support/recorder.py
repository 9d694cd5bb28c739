"""A real HTTP server on loopback that records what reaches it and answers a fixed JSON.

Used where a test must see exactly what the gateway sent upstream (path, query, headers,
credentials), which the simulator does not report.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.net import LOOPBACK

ANSWER = {
    "candidates": [{"content": {"role": "model", "parts": [{"text": "recorded"}]}, "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2},
}


@dataclass
class Recorded:
    method: str
    path: str  # with the query string, exactly as received
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when its body had arrived


@dataclass
class Recorder:
    url: str
    requests: list[Recorded] = field(default_factory=list)


@contextmanager
def recording_upstream(delay_s: float = 0.0) -> Iterator[Recorder]:
    """``delay_s``: how long each answer takes (after the request is recorded)."""
    recorder = Recorder(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _record(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            recorder.requests.append(
                Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            time.sleep(delay_s)
            payload = json.dumps(ANSWER).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json; charset=UTF-8")
            self.send_header("content-length", str(len(payload)))
            self.send_header("x-goog-trace", "kept")
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _record

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    recorder.url = f"http://{LOOPBACK}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
