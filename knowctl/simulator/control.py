"""The simulator's control endpoints under ``/_simulator/``: stats, reset and config (not Google's API)."""

from __future__ import annotations

from typing import Any

from knowctl.net.asgi import (
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    read_body,
    respond_error,
    respond_json,
)
from knowctl.simulator import answers, files
from knowctl.simulator.state import SimulatorState

CONTROL_PREFIX = "/_simulator/"
_CONTROL_ROUTES = {
    "/_simulator/stats": ("GET",),
    "/_simulator/reset": ("POST",),
    "/_simulator/config": ("GET", "POST"),
}


async def control(state: SimulatorState, path: str, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one control call; see the docstring of :mod:`knowctl.simulator.app`.

    ``POST /_simulator/config`` also takes ``{"generated_file": {"bytes_b64": ..., "mime_type":
    ..., "display_name": ...}}``: it stores a file with ``source: GENERATED`` (the only kind
    Google lets be downloaded; its bytes are kept, bounded by this call's 1 MiB body) and the
    answer carries its ``File`` under ``generated_file``. It is checked with the other changes,
    and made only if they all apply."""
    method: str = scope["method"]
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
            changes = answers.parse_json_object(body or b"{}")
            wanted = changes.pop("generated_file", None)
            spec = files.generated_file_spec(wanted) if wanted is not None else None
            state.configure(changes)
        except answers.BadRequest as exc:
            await respond_error(send, 400, str(exc))
            return
        if spec is not None:
            answer: dict[str, Any] = state.config_json()
            answer["generated_file"] = files.add_generated(state, spec, scope)
            await respond_json(send, 200, answer)
            return
    await respond_json(send, 200, state.config_json() if path.endswith("config") else state.stats_json())
