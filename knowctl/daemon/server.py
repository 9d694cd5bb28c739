"""Running the daemon: bind, banner, one process or workers (uvicorn, through knowctl.net), clean shutdown."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from knowctl.daemon.app import SIMULATOR_PREFIX, Gateway, Phase
from knowctl.daemon.config import transport_limits
from knowctl.logs import setup_logging
from knowctl.net.uvicorn_glue import StoppingServer, run_workers, server_config
from knowctl.redact import redact_url
from knowctl.settings import Settings


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _server_config(app: Any, settings: Settings, **extra: Any) -> Any:
    if settings.tls_cert_file is not None:
        extra.update(ssl_certfile=str(settings.tls_cert_file), ssl_keyfile=str(settings.tls_key_file))
    return server_config(
        app,
        transport_limits(settings),
        drain_timeout=settings.drain_timeout,
        keep_alive_timeout=settings.keep_alive_timeout,
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

    def draining() -> None:
        # Readiness turns 503 at once, so load balancers stop sending new work.
        gateway.phase = Phase.DRAINING

    StoppingServer(_server_config(gateway, settings), on_stop=draining).run(sockets=[sock])


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
    run_workers(_server_config(factory, settings, factory=True, workers=settings.workers), sock)


def _worker_app(settings: Settings) -> Gateway:
    """Factory run in each worker process (``--workers N``), with the supervisor's Settings."""
    setup_logging(settings.log_level, settings.log_format)
    return Gateway(settings)


def print_banner(settings: Settings, port: int, gateway: Gateway) -> None:
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    scheme = "https" if settings.tls_cert_file is not None else "http"
    console.print(f"[bold]knowctl serve[/] listening on {scheme}://{settings.host}:{port}")
    if settings.simulate:
        console.print(
            "[yellow]upstream: the built-in SIMULATOR (made-up answers, not Google; for trying knowctl)[/]"
        )
    else:
        upstream = redact_url(gateway.upstream.target)
        console.print(f"upstream: {upstream} (credentials: {gateway.upstream.credentials_mode})")
    console.print(f"store: {gateway.store.describe()}")
    if settings.admin_token is None:
        console.print("admin API: no KNOWCTL_ADMIN_TOKEN set, so it answers on loopback only")
    sys.stderr.flush()
