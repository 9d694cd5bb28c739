"""A loopback upstream that, like Google, answers only calls carrying a credential it knows.

The simulator accepts any credential; tests of what the gateway does with made-up ones need
an upstream that refuses them (400 API_KEY_INVALID, as the Gemini API does). It reads a
credential where Google does (``x-goog-api-key``, ``Authorization: Bearer``, ``?key=``,
``?access_token=``, percent-encoded names included) and records every request it received.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from tests.support.net import LOOPBACK
from tests.support.recorder import Recorded

_QUERY_CREDENTIALS = {"key", "$key", "access_token", "oauth_token"}


@dataclass
class KeyedUpstream:
    url: str
    valid: set[str]
    requests: list[Recorded] = field(default_factory=list)

    def answers(self) -> int:
        """How many calls it answered with a model answer (a known credential)."""
        return sum(1 for r in self.requests if credential_of(r) in self.valid)


def credential_of(seen: Recorded) -> str | None:
    """The credential Google would read from a recorded request, if any."""
    if seen.headers.get("x-goog-api-key"):
        return seen.headers["x-goog-api-key"]
    scheme, _, token = seen.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    for name, value in parse_qsl(urlsplit(seen.path).query, keep_blank_values=True):
        if name in _QUERY_CREDENTIALS and value:
            return value
    return None


def _answer(text: str) -> dict[str, object]:
    return {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2},
    }


_INVALID = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
    }
}


@contextmanager
def keyed_upstream(*valid: str) -> Iterator[KeyedUpstream]:
    upstream = KeyedUpstream(url="", valid=set(valid))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            upstream.requests.append(seen)
            known = credential_of(seen) in upstream.valid
            status, payload = (200, _answer(f"answer {len(upstream.requests)}")) if known else (400, _INVALID)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json; charset=UTF-8")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    upstream.url = f"http://{LOOPBACK}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        server.shutdown()
        server.server_close()
