"""The simulator's control endpoints under ``/_simulator/``: stats, reset and config (not Google's API)."""

from __future__ import annotations

from knowctl.net.asgi import (
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Send,
    read_body,
    respond_error,
    respond_json,
)
from knowctl.simulator import answers
from knowctl.simulator.state import SimulatorState

CONTROL_PREFIX = "/_simulator/"
_CONTROL_ROUTES = {
    "/_simulator/stats": ("GET",),
    "/_simulator/reset": ("POST",),
    "/_simulator/config": ("GET", "POST"),
}


async def control(state: SimulatorState, path: str, method: str, receive: Receive, send: Send) -> None:
    """Answer one control call; see the docstring of :mod:`knowctl.simulator.app`."""
    allowed = _CONTROL_ROUTES.get(path)
    if allowed is None:
        await respond_error(send, 404, f"The requested URL {path} was not found on this server.")
        return
    if method not in allowed:
        await respond_error(send, 405, f"Method {method} is not allowed for {path}.")
        return
    if path == "/_simulator/stats":
        await respond_json(send, 200, state.stats_json())
        return
    try:
        body = await read_body(receive, 1024 * 1024, None)
    except (BodyTooLarge, ClientDisconnected):
        await respond_error(send, 413, "Request payload size exceeds the limit.")
        return
    if path == "/_simulator/reset":
        state.reset()
    elif method == "POST":
        try:
            state.configure(answers.parse_json_object(body or b"{}"))
        except answers.BadRequest as exc:
            await respond_error(send, 400, str(exc))
            return
    await respond_json(send, 200, state.config_json() if path.endswith("config") else state.stats_json())
