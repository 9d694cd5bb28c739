"""Errors in the JSON shape Google's APIs use: ``{"error": {"code", "message", "status"}}``.

Pure functions: the daemon and the simulator both build their error bodies here, so that
every client (the official SDKs above all) sees one familiar shape.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

# google.rpc.Code names for the HTTP statuses knowctl answers with.
STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"


def error_body(code: int, message: str, *, details: list[dict[str, Any]] | None = None) -> bytes:
    """Serialise one error in Google's shape."""
    error: dict[str, Any] = {"code": code, "message": message, "status": STATUS_NAMES.get(code, "UNKNOWN")}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error})


def retry_delay_text(seconds: float) -> str:
    """``google.protobuf.Duration`` JSON text as Google writes it in RetryInfo ("15s", "0.5s")."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.3f}".rstrip("0") + "s"


def retry_info(seconds: float) -> dict[str, Any]:
    return {"@type": RETRY_INFO_TYPE, "retryDelay": retry_delay_text(seconds)}


def retry_after_header(seconds: float) -> str:
    """HTTP ``Retry-After`` delta-seconds: rounded up, at least 1 (RFC 9110 allows no fractions)."""
    return str(max(1, math.ceil(seconds)))


def parse_retry_delay(body: bytes) -> float | None:
    """The ``RetryInfo.retryDelay`` of an upstream 429 body, in seconds, if it carries one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, list) and data:  # JSON-array stream framing wraps the error
        data = data[0]
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(details, list):
        return None
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == RETRY_INFO_TYPE:
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    return max(0.0, float(delay[:-1]))
                except ValueError:
                    return None
    return None
