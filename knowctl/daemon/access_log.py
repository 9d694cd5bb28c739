"""The access log: one structured line per request, with what the pipeline decided."""

from __future__ import annotations

import itertools
import logging
import os

from knowctl.net.asgi import Scope

log = logging.getLogger("knowctl.access")

# Request ids unique per process without the cost of a uuid per request.
_PREFIX = f"{os.getpid():x}-"
_counter = itertools.count(1)

# Keys the pipeline leaves in the ASGI scope for this line (see proxy.py and generate.py).
SCOPE_USER = "knowctl.user"
SCOPE_CACHE = "knowctl.cache"
SCOPE_QUOTA = "knowctl.quota"
SCOPE_REQUEST_ID = "knowctl.request_id"


def request_id(scope: Scope) -> str:
    """The request's id: the client's X-Request-Id, else one of ours; the same every time it
    is asked for one request (an error answer names it, the access log line too)."""
    found: str | None = scope.get(SCOPE_REQUEST_ID)
    if found is not None:
        return found
    found = _PREFIX + str(next(_counter))
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            found = _printable(value.decode("latin-1")[:128]) or found
    scope[SCOPE_REQUEST_ID] = found
    return found


def _printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable())


def access_log(scope: Scope, route: str, status: int, elapsed_s: float) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
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
            "user": scope.get(SCOPE_USER),
            "cache": scope.get(SCOPE_CACHE),
            "quota": scope.get(SCOPE_QUOTA),
        },
    )
