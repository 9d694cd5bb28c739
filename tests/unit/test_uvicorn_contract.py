"""The uvicorn internals knowctl.net.uvicorn_glue relies on, named one by one.

uvicorn is pinned below its next minor version; when the pin moves, this test says which
private name changed before any transport test fails in a way that hides why.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pytest
import uvicorn
from uvicorn.protocols.http import flow_control, httptools_impl

ROOT = Path(__file__).resolve().parents[2]

PROTOCOL_METHODS = (
    "on_message_begin",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
    "data_received",
    "connection_made",
    "connection_lost",
    "shutdown",
    "send_400_response",
    "handle_websocket_upgrade",
)
PROTOCOL_ATTRIBUTES = ("transport", "flow", "cycle", "pipeline", "headers", "client", "loop", "server_state")
CYCLE_ATTRIBUTES = (
    "scope",
    "body",
    "response_started",
    "response_complete",
    "disconnected",
    "waiting_for_100_continue",
    "message_event",
)


def assigned_in_init(cls: type) -> set[str]:
    """The ``self.NAME`` attributes that ``cls.__init__`` assigns."""
    return set(re.findall(r"self\.(\w+)\s*(?::[^=\n]+)?=", inspect.getsource(cls.__init__)))  # type: ignore[misc]


def test_the_installed_uvicorn_is_the_pinned_minor() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("uvicorn"))
    low = re.search(r">=(\d+)\.(\d+)", spec)
    high = re.search(r"<(\d+)\.(\d+)", spec)
    assert low and high, f"uvicorn must be pinned to one minor version, found {spec!r}"
    installed = tuple(int(x) for x in uvicorn.__version__.split(".")[:2])
    assert (int(low[1]), int(low[2])) <= installed < (int(high[1]), int(high[2])), (
        f"uvicorn {uvicorn.__version__} is outside {spec!r}"
    )


@pytest.mark.parametrize("name", PROTOCOL_METHODS)
def test_http_protocol_has_the_callbacks_the_gateway_overrides(name: str) -> None:
    assert callable(getattr(httptools_impl.HttpToolsProtocol, name, None)), (
        f"uvicorn's HttpToolsProtocol.{name} is gone: knowctl/net/uvicorn_glue.py calls it by name"
    )


def test_http_protocol_attributes() -> None:
    missing = set(PROTOCOL_ATTRIBUTES) - assigned_in_init(httptools_impl.HttpToolsProtocol)
    assert not missing, f"HttpToolsProtocol no longer sets {sorted(missing)} (used by uvicorn_glue)"


def test_request_response_cycle_attributes() -> None:
    missing = set(CYCLE_ATTRIBUTES) - assigned_in_init(httptools_impl.RequestResponseCycle)
    assert not missing, f"RequestResponseCycle no longer sets {sorted(missing)} (used by uvicorn_glue)"


def test_module_names() -> None:
    assert isinstance(httptools_impl.STATUS_LINE, dict) and httptools_impl.STATUS_LINE[200].startswith(
        b"HTTP/1.1 200"
    )
    assert callable(flow_control.FlowControl.resume_reading)
    assert flow_control.HIGH_WATER_LIMIT == 65536, (
        "on_body's pause point moved: the held-bytes bound counts it"
    )


def test_server_state_and_captured_signals() -> None:
    state = uvicorn.server.ServerState()
    assert isinstance(state.total_requests, int) and isinstance(state.default_headers, list)
    server = uvicorn.Server(uvicorn.Config(app=None))
    assert server._captured_signals == [], "StoppingServer clears Server._captured_signals to exit 0"
    assert "_captured_signals" in inspect.getsource(uvicorn.Server.handle_exit)
