"""Running the daemon: bind, banner, uvicorn with uvloop and httptools, clean shutdown."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import sys
from typing import Any, cast

import uvicorn

from knowctl.daemon.app import SIMULATOR_PREFIX, Gateway, Phase
from knowctl.daemon.protocol import protocol_factory
from knowctl.logs import setup_logging
from knowctl.redact import redact_url
from knowctl.settings import Settings


class GatewayServer(uvicorn.Server):
    """uvicorn's server, telling the gateway the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self._gateway = gateway

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Readiness turns 503 at once, so load balancers stop sending new work.
        self._gateway.phase = Phase.DRAINING
        super().handle_exit(sig, frame)
        # A stop signal is how the daemon is meant to stop: once everything admitted has
        # been answered, exit 0 instead of re-raising the signal as uvicorn does (status 143).
        self._captured_signals.clear()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(app: Any, settings: Settings, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        loop="uvloop",
        # httptools, with Google-shaped refusals and the transport's limits (protocol.py)
        http=cast(type[asyncio.Protocol], protocol_factory(settings)),
        # No WebSocket routes: an upgrade would hand the connection to a protocol that
        # keeps none of those limits.
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # X-Forwarded-For is believed only from trusted proxies (callers)
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout),
        # uvicorn's 5 s default is below every proxy's idle timeout: the proxy would reuse
        # connections the daemon is closing (a 502 for its caller).
        timeout_keep_alive=settings.keep_alive_timeout,
        **extra,
    )


def serve(settings: Settings) -> None:
    """Run until a stop signal; the caller has validated the settings."""
    setup_logging(settings.log_level, settings.log_format)
    sock = _bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    simulator = None
    if settings.simulate:
        from knowctl.simulator.app import SimulatorApp, SimulatorConfig

        simulator = SimulatorApp(SimulatorConfig())
        loopback = "[::1]" if ":" in settings.host else "127.0.0.1"
        settings = settings.model_copy(update={"upstream_url": f"http://{loopback}:{port}{SIMULATOR_PREFIX}"})
    if settings.workers > 1:
        _serve_workers(settings, sock)
        return
    gateway = Gateway(settings, simulator=simulator)
    print_banner(settings, port, gateway)
    server = GatewayServer(_uvicorn_config(gateway, settings), gateway)
    server.run(sockets=[sock])


def _serve_workers(settings: Settings, sock: socket.socket) -> None:
    # Metrics of all workers are summed from files in this directory (see metrics.exposition);
    # set before the workers start, so their prometheus-client picks its multi-process mode.
    import tempfile

    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="knowctl-metrics-"))
    # The workers get the resolved Settings themselves, pickled with the uvicorn config over
    # multiprocessing's spawn pipe: nothing goes through the environment, where every
    # worker's /proc/<pid>/environ would show the secrets read from KNOWCTL_*_FILE, and
    # flags and --config need no re-reading (a worker restarted later runs the same settings).
    import functools

    factory = functools.partial(_worker_app, settings)
    config = _uvicorn_config(factory, settings, factory=True, workers=settings.workers)
    from uvicorn.supervisors import Multiprocess

    Multiprocess(config, sockets=[sock]).run()


def _worker_app(settings: Settings) -> Gateway:
    """Factory run in each worker process (``--workers N``), with the supervisor's Settings."""
    setup_logging(settings.log_level, settings.log_format)
    return Gateway(settings)


def print_banner(settings: Settings, port: int, gateway: Gateway) -> None:
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    console.print(f"[bold]knowctl serve[/] listening on http://{settings.host}:{port}")
    if settings.simulate:
        console.print(
            "[yellow]upstream: the built-in SIMULATOR (made-up answers, not Google; for trying knowctl)[/]"
        )
    else:
        upstream = redact_url(gateway.upstream.target)
        console.print(f"upstream: {upstream} (credentials: {gateway.credentials.mode})")
    console.print(f"store: {gateway.store.describe()}")
    if settings.admin_token is None:
        console.print("admin API: no KNOWCTL_ADMIN_TOKEN set, so it answers on loopback only")
    sys.stderr.flush()
