"""The topic document: the generateContent call that makes a topic, and the HTTP answer (with its
ETag and cache headers) made from the model's answer."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from knowctl.daemon.context import CallContext, notes_of
from knowctl.daemon.topics.config import TopicsConfig
from knowctl.net.asgi import Send, respond
from knowctl.policy.paths import ApiCall, Family

# Client headers the generation call may use: credentials and forwarding, nothing else
# (no cookies, no conditional headers, no client Cache-Control: a hard reload by one
# visitor must not regenerate content for everyone).
FORWARD = frozenset(
    {"authorization", "x-goog-api-key", "x-goog-user-project", "x-forwarded-for", "x-real-ip", "forwarded"}
)


def etag_of(body: bytes) -> bytes:
    return b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'


def etag_matches(if_none_match: str, etag: bytes) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2): W/ is ignored."""
    wanted = etag.decode()
    for item in if_none_match.split(","):
        tag = item.strip()
        if tag == "*" or tag.removeprefix("W/") == wanted:
            return True
    return False


def answer_text(body: bytes) -> tuple[str, str | None]:
    """(the text of the first candidate, modelVersion) of a GenerateContentResponse."""
    data = orjson.loads(body)
    parts = data["candidates"][0]["content"]["parts"]
    text = "".join(p.get("text", "") for p in parts if isinstance(p, dict))
    version = data.get("modelVersion")
    return text, version if isinstance(version, str) else None


def generation_call(
    config: TopicsConfig,
    topic: str,
    prompt: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    client: Any = None,
    internal: bool = False,
    refresh: bool = False,
) -> CallContext:
    """The generateContent call for ``topic``; ``internal`` marks the gateway's own calls
    (refresh, prewarm: CallNotes.internal), which run at LOW priority; ``refresh`` reads no
    cached answer."""
    payload = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    model = config.topics_model
    if config.vertex_project:
        project, location = config.vertex_project, config.vertex_location
        call = ApiCall(Family.VERTEX, "v1", model, "generateContent", project, location)
        path = f"/v1/projects/{project}/locations/{location}/publishers/google/models/{model}"
    else:
        call = ApiCall(Family.GEMINI, "v1beta", model, "generateContent")
        path = f"/v1beta/models/{model}"
    path += ":generateContent"
    out = [(k, v) for k, v in headers or () if k in FORWARD]
    out += [("content-type", "application/json"), ("x-knowctl-topic", topic)]
    if internal:
        out.append(("x-knowctl-priority", "LOW"))
    if refresh:
        out.append(("cache-control", "no-cache"))  # read nothing: regenerate
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out],
        "client": client or ("127.0.0.1", 0),
    }
    notes = notes_of(scope)
    notes.topic = topic
    if internal:
        notes.internal = "topics"
    return CallContext(
        scope=scope,
        call=call,
        method="POST",
        raw_path=path,
        query="",
        headers=out,
        header=dict(out),
        client_ip=scope["client"][0],
        body=orjson.dumps(payload),
        payload=payload,
        notes=notes,
    )


def cache_headers(config: TopicsConfig) -> list[tuple[bytes, bytes]]:
    """Cache-Control for browsers, and CDN-Cache-Control / Surrogate-Control for CDNs."""
    if not config.topics_public:
        return [(b"cache-control", f"private, max-age={config.topics_browser_max_age}".encode())]
    cdn = f"max-age={config.topics_cdn_max_age}".encode()
    return [
        (b"cache-control", f"public, max-age={config.topics_browser_max_age}".encode()),
        (b"cdn-cache-control", cdn),
        (b"surrogate-control", cdn),
    ]


async def send_document(
    send: Send, method: str, body: bytes, headers: list[tuple[bytes, bytes]], if_none_match: str
) -> int:
    """Send the document ``body`` with ``headers`` (its ETag among them): 304 when
    ``if_none_match`` matches, the head alone for HEAD, else 200. Returns the status."""
    etag = next(v for k, v in headers if k == b"etag")
    if etag_matches(if_none_match, etag):
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return 304
    if method == "HEAD":
        length = (b"content-length", str(len(body)).encode())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json; charset=UTF-8"), length, *headers],
            }
        )
        await send({"type": "http.response.body", "body": b""})
        return 200
    await respond(send, 200, body, extra_headers=headers)
    return 200
