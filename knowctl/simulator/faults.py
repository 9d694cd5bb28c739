"""Injected upstream failures: how the simulator answers a generate/stream call that must fail."""

from __future__ import annotations

import orjson

from knowctl.errors import error_body
from knowctl.net.asgi import JSON, Receive, Send, respond
from knowctl.simulator import answers
from knowctl.simulator.google_errors import BAD_KEY_BODY, DENIED_BODY, INTERNAL_MESSAGE, in_array
from knowctl.simulator.state import SimulatorConfig
from knowctl.simulator.wire import SSE, drop_connection, send_chunks, wait_disconnect

_BROKEN_JSON = b'{"candidates": [{"content": {"role": "model", "parts": [{"text": "cut'


async def inject(
    fault: str,
    config: SimulatorConfig,
    stream: bool,
    sse: bool,
    answer: answers.Answer,
    receive: Receive,
    send: Send,
) -> None:
    """Answer as the fault ``fault`` (one of :data:`state.FAULTS`) would."""
    array = stream and not sse
    if fault == "error500":
        await respond(send, 500, in_array(error_body(500, INTERNAL_MESSAGE), array))
    elif fault in ("denied", "bad_key"):
        data = orjson.dumps(DENIED_BODY if fault == "denied" else BAD_KEY_BODY)
        status = 403 if fault == "denied" else 400
        await respond(send, status, in_array(data, array))
    elif fault == "hang":
        await wait_disconnect(receive)
    elif fault == "reset":
        await drop_connection(send, receive)
    elif fault == "invalid_json":
        if sse:
            await respond(send, 200, b"data: " + _BROKEN_JSON + b"\r\n\r\n", SSE)
        else:
            await respond(send, 200, (b"[" + _BROKEN_JSON + b"\n]") if stream else _BROKEN_JSON, JSON)
    else:  # cut_stream: part of the answer, then the connection goes
        if stream:
            chunks = answers.stream_chunks(answer, max(2, config.chunks))
            await send_chunks(send, chunks, sse, config.chunk_delay_ms, upto=max(1, len(chunks) // 2))
        else:
            data = orjson.dumps(answers.response(answer))
            headers = [(b"content-type", JSON), (b"content-length", str(len(data)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
        await drop_connection(send, receive)
