"""What a tenant may see of the provider's error answers when the gateway called with its
own credentials.

Google's errors name the project (number and id), the API key (in ``ErrorInfo.metadata``),
the console links of the project and the service account: facts about the gateway's own
account that no tenant should learn. Such answers are rebuilt here from the parts that
help the caller (code, status, a message with those facts taken out, retry and field
details); a refusal of the gateway's own credentials (401, 403) becomes a plain 502 that
names the request (so does the Gemini API's 400 API_KEY_INVALID), since it is the
operator's problem and not the caller's.

Pure code: the daemon logs the original answer under the same request id.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from knowctl.errors import STATUS_NAMES, error_body

# Details that carry no account facts and that clients act on.
_KEPT_DETAILS = frozenset(
    {
        "type.googleapis.com/google.rpc.RetryInfo",
        "type.googleapis.com/google.rpc.BadRequest",
    }
)
# The gateway's credentials were refused: not the caller's doing, and nothing to retry.
CREDENTIALS_REFUSED = frozenset({401, 403})
_REDACTED = "[redacted]"
_ACCOUNT_FACTS = (
    re.compile(r"AIza[0-9A-Za-z_\-]{20,}"),  # Google API keys
    re.compile(r"ya29\.[0-9A-Za-z_\-.]+"),  # OAuth access tokens
    re.compile(r"https?://\S+"),  # console and help links carry ?project=
    re.compile(r"[\w.\-]+@[\w\-]+\.iam\.gserviceaccount\.com"),
    re.compile(r"(?i)(projects?[/ :=]+)[\w\-.]+"),
    re.compile(r"(?i)(consumer[/ :=]+)[\w\-.]+"),
    re.compile(r"\b\d{6,}\b"),  # project numbers
)


def redact(text: str) -> str:
    """``text`` without project names and numbers, keys, tokens, accounts and links."""
    for pattern in _ACCOUNT_FACTS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + _REDACTED, text)
    return text


def tenant_error(status: int, body: bytes, request_id: str) -> tuple[int, bytes]:
    """The status and body a tenant gets for the provider's error ``status`` / ``body``."""
    if status in CREDENTIALS_REFUSED or (status == 400 and b"API_KEY_INVALID" in body):
        message = (
            f"The gateway could not call the provider for this request (request id {request_id}); "
            "its operator has the details."
        )
        return 502, error_body(502, message)
    error = _error_object(body)
    if error is None:
        message = f"The provider answered {status} (request id {request_id})."
        return status, error_body(status, message)
    text = error.get("message")
    said = redact(text) if isinstance(text, str) else ""
    named = error.get("status")
    shaped: dict[str, Any] = {
        "code": status,
        "message": f"{said} (request id {request_id})".lstrip(),
        "status": named if isinstance(named, str) else STATUS_NAMES.get(status, "UNKNOWN"),
    }
    details = error.get("details")
    if isinstance(details, list):
        kept = [d for d in details if isinstance(d, dict) and d.get("@type") in _KEPT_DETAILS]
        if kept:
            shaped["details"] = _redact_strings(kept)
    return status, orjson.dumps({"error": shaped})


def _redact_strings(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: v if k == "@type" else _redact_strings(v) for k, v in value.items()}
    return value


def _error_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, list) and len(data) == 1:  # the JSON-array framing of a stream
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None
