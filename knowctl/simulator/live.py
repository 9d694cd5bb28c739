"""A small Live API server: the WebSocket google-genai's ``live.connect`` opens, answering each
text turn with the simulator's answer and its usage, as Google's BidiGenerateContent does.

- The first message must be the setup (``{"setup": {"model": "models/m", ...}}``); the answer
  is ``{"setupComplete": {}}``. Anything else first closes with 1007, as Google does.
- A ``clientContent`` turn that completes (``turnComplete``) or a ``realtimeInput`` with text
  is answered with the model turn (``serverContent.modelTurn``), then ``turnComplete`` with
  ``usageMetadata`` (prompt, response and total tokens, the simulator's token rule).
- Messages are read in either JSON spelling (``client_content`` as the SDK sends it, or
  ``clientContent``).
- Frames go out as binary JSON, as Google sends them (the SDK reads either).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from knowctl.net.asgi import Receive, Scope, Send
from knowctl.simulator import answers

_PATHS = re.compile(
    r"/ws/google\.(?:ai\.generativelanguage\.(?:v1|v1beta|v1alpha)\.GenerativeService\."
    r"BidiGenerateContent(?:Constrained)?|cloud\.aiplatform\.(?:v1|v1beta1)\.LlmBidiService/BidiGenerateContent)"
)
INVALID = 1007  # the payload is not what the protocol expects (RFC 6455)


def serves(path: str) -> bool:
    return _PATHS.fullmatch(path) is not None


async def session(scope: Scope, receive: Receive, send: Send, counters: dict[str, int]) -> None:
    """One Live session on an accepted-to-be WebSocket; ``counters`` counts sessions and turns."""
    if (await receive())["type"] != "websocket.connect":
        return
    if not serves(scope["path"]):
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    setup = _json(await receive())
    if setup is None or not isinstance(setup.get("setup"), dict):
        await send(
            {"type": "websocket.close", "code": INVALID, "reason": "The first message must be the setup."}
        )
        return
    named = setup["setup"].get("model")
    model = named.rpartition("/")[2] if isinstance(named, str) else ""
    counters["live_sessions"] = counters.get("live_sessions", 0) + 1
    await _send(send, {"setupComplete": {}})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        found = _json(message)
        texts = _turn_texts(found) if found is not None else None
        if texts is None:
            continue  # audio, tool responses, a turn not yet complete: nothing to answer
        counters["live_turns"] = counters.get("live_turns", 0) + 1
        text = answers.answer_text(model, texts)
        prompt, response = answers.prompt_tokens(texts), answers.prompt_tokens([text])
        await _send(send, {"serverContent": {"modelTurn": {"role": "model", "parts": [{"text": text}]}}})
        usage = {
            "promptTokenCount": prompt,
            "responseTokenCount": response,
            "totalTokenCount": prompt + response,
        }
        await _send(send, {"serverContent": {"turnComplete": True}, "usageMetadata": usage})


def _field(message: dict[str, Any], camel: str, snake: str) -> Any:
    # Google's JSON takes either spelling; the SDK sends "client_content" with "turnComplete".
    return message.get(camel, message.get(snake))


def _turn_texts(message: dict[str, Any]) -> list[str] | None:
    """The texts of a turn to answer now, or None."""
    content = _field(message, "clientContent", "client_content")
    if isinstance(content, dict):
        if not _field(content, "turnComplete", "turn_complete"):
            return None
        texts: list[str] = []
        for turn in content.get("turns") or []:
            for part in turn.get("parts") or [] if isinstance(turn, dict) else []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
        return texts
    realtime = _field(message, "realtimeInput", "realtime_input")
    if isinstance(realtime, dict) and isinstance(realtime.get("text"), str):
        return [realtime["text"]]
    return None


def _json(message: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = message.get("bytes") or message.get("text")
    if not raw:
        return None
    try:
        found = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


async def _send(send: Send, message: dict[str, Any]) -> None:
    await send({"type": "websocket.send", "bytes": orjson.dumps(message)})
