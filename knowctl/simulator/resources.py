"""What the simulator's stored resources (files, context caches) share: Google's timestamps and
durations, resource ids, list paging, and the base URL the resources' absolute URLs start with.

Pure code but for :func:`new_id` (random) and :func:`public_base` (reads the request's scope).
Times are wall-clock seconds since the epoch, passed in by the caller, so a test can move them.
"""

from __future__ import annotations

import base64
import re
import secrets
import string
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar
from urllib.parse import parse_qs

from knowctl.net.asgi import BodyTooLarge, ClientDisconnected, Receive, Scope, Send, read_body, respond_error
from knowctl.simulator.answers import BadRequest

T = TypeVar("T")

_ID_ALPHABET = string.ascii_lowercase + string.digits
# google.protobuf.Duration in JSON: seconds with up to nine fractional digits, then "s".
_DURATION = re.compile(r"(?P<seconds>\d{1,12})(?:\.(?P<fraction>\d{1,9}))?s")


def new_id(length: int = 12) -> str:
    """An opaque id in Google's style for files and Gemini API caches: lowercase letters and digits."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def rfc3339(instant: float) -> str:
    """A timestamp as Google writes them: UTC, microseconds, ``Z`` (``2025-03-29T12:39:16.599879Z``)."""
    return datetime.fromtimestamp(instant, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(value: object, field: str) -> float:
    """An RFC 3339 timestamp (``Z`` or an offset; the SDK sends Python's isoformat) as epoch seconds."""
    if not isinstance(value, str):
        raise BadRequest(f"Invalid value at '{field}': must be an RFC 3339 timestamp string")
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise BadRequest(f"Invalid value at '{field}' ({value!r}): not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:  # Google's timestamps are UTC; one without an offset is read as UTC
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_duration(value: object, field: str) -> float:
    """A ``google.protobuf.Duration`` JSON string (``"300s"``, ``"1.5s"``) as seconds."""
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise BadRequest(f"Invalid value at '{field}' ({value!r}): a duration such as \"300s\" is expected")
    fraction = match["fraction"] or ""
    return int(match["seconds"]) + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def query_params(scope: Scope) -> dict[str, str]:
    """The request's query parameters, the first value of each."""
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return {name: values[0] for name, values in parsed.items()}


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (``name`` in lowercase, as ASGI gives them), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def public_base(scope: Scope) -> str:
    """Where the client reached this app: ``{scheme}://{Host}{root_path}``.

    Absolute URLs in answers (the upload URL, a file's ``uri``) start with it, so that a client
    that follows them comes back to the same app: ``root_path`` is the prefix under which a host
    app mounted this one (the gateway's ``--simulate`` mode), and the SDK keeps the URL's path
    when it swaps in its own base URL's scheme and host."""
    host = header(scope, b"host")
    if not host:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}"


def page_size(params: dict[str, str], default: int, maximum: int) -> int:
    """``pageSize``: absent or 0 is ``default``; above ``maximum`` is coerced to it, as Google does."""
    raw = params.get("pageSize")
    if raw is None or raw == "":
        return default
    try:
        size = int(raw)
    except ValueError:
        raise BadRequest(f"Invalid value at 'page_size' (TYPE_INT32), \"{raw}\"") from None
    if size < 0:
        raise BadRequest("page_size must not be negative")
    return min(size, maximum) if size else default


def page(
    items: Sequence[T], seq: Callable[[T], int], size: int, token: str | None
) -> tuple[list[T], str | None]:
    """One page of ``items`` (newest first, ``seq`` decreasing) and the token of the next page.

    The token names the sequence number the next page starts at, not an offset, so a file
    deleted between two pages moves no other file from one page to the next."""
    start = 0
    if token:
        try:
            after = int(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)).decode())
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("Invalid page token.") from None
        start = next((i for i, item in enumerate(items) if seq(item) <= after), len(items))
    chosen = list(items[start : start + size])
    if start + size >= len(items):
        return chosen, None
    following = str(seq(items[start + size])).encode()
    return chosen, base64.urlsafe_b64encode(following).rstrip(b"=").decode()


async def request_body(
    scope: Scope, receive: Receive, send: Send, methods: Sequence[str], limit: int
) -> bytes | None:
    """The body of a resource call whose method is one of ``methods``; None once the call
    is answered (405, 413 in Google's shape) or its client has gone."""
    method = scope["method"]
    if method not in methods:
        await respond_error(send, 405, f"Method {method} is not allowed for {scope['path']}.")
        return None
    try:
        return await read_body(receive, limit, header(scope, b"content-length"))
    except BodyTooLarge:
        await respond_error(send, 413, "Request payload size exceeds the limit.")
    except ClientDisconnected:
        pass
    return None
