"""The access log: one structured line per request, with what the pipeline decided."""

from __future__ import annotations

import itertools
import logging
import os

from knowctl.daemon.context import CallNotes, notes_of
from knowctl.net.asgi import Scope

log = logging.getLogger("knowctl.access")

# Request ids unique per process without the cost of a uuid per request.
_PREFIX = f"{os.getpid():x}-"
_counter = itertools.count(1)


def request_id(scope: Scope) -> str:
    """The request's id: the client's X-Request-Id, else one of ours; the same every time it
    is asked for one request (an error answer names it, the access log line too)."""
    return call_id(notes_of(scope), scope["headers"])


def call_id(notes: CallNotes, headers: list[tuple[bytes, bytes]]) -> str:
    """:func:`request_id` of the request whose ``notes`` and raw ``headers`` these are."""
    if notes.request_id is not None:
        return notes.request_id
    found = _PREFIX + str(next(_counter))
    for name, value in headers:
        if name == b"x-request-id":
            found = _printable(value.decode("latin-1")[:128]) or found
    notes.request_id = found
    return found


def _printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable())


def access_log(scope: Scope, route: str, status: int, elapsed_s: float) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    notes = notes_of(scope)
    log.info(
        "%s %s %d",
        scope["method"],
        route,
        status,
        extra={
            "request_id": request_id(scope),
            "route": route,
            "status": status,
            "latency_ms": round(elapsed_s * 1000, 3),
            "user": notes.user,
            "cache": notes.cache,
            "quota": notes.quota,
        },
    )
