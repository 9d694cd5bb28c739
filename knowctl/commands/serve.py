"""``knowctl serve``: run the gateway daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from knowctl.commands.common import EXIT_CONFIG, fail, settings_or_exit


def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on \\[env KNOWCTL_HOST; 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on \\[env KNOWCTL_PORT; 8080].")] = None,
    upstream: Annotated[
        str | None,
        typer.Option(
            "--upstream", help="Upstream base URL, e.g. http://127.0.0.1:8090 \\[env KNOWCTL_UPSTREAM_URL]."
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store", help="State store URL: memory:// or redis://host:6379/0 \\[env KNOWCTL_STORE_URL]."
        ),
    ] = None,
    simulate: Annotated[
        bool | None,
        typer.Option(
            "--simulate", help="Use the built-in simulator as upstream (no Google credentials needed)."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes on one port (needs a redis:// store).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="YAML config file \\[env KNOWCTL_CONFIG].", exists=True, dir_okay=False
        ),
    ] = None,
) -> None:
    """Run the gateway daemon: Gemini and Vertex AI REST API, with quotas and caches."""
    settings = settings_or_exit(
        config,
        host=host,
        port=port,
        upstream_url=upstream,
        store_url=store,
        simulate=simulate,
        workers=workers,
    )
    if settings.workers > 1 and settings.simulate:
        fail("--simulate runs one process: its simulator lives in it. Drop --workers.", EXIT_CONFIG)
    if settings.workers > 1 and settings.store_url.startswith("memory://"):
        fail(
            "--workers needs a shared store: with memory:// each worker would keep its own quota "
            "and cache. Use --store redis://... or run one worker.",
            EXIT_CONFIG,
        )
    from knowctl.daemon.server import serve as run_daemon
    from knowctl.daemon.upstream.credentials import CredentialsError
    from knowctl.settings import ConfigError

    try:
        run_daemon(settings)
    except (ConfigError, CredentialsError) as exc:  # a key file or credentials that cannot be read
        fail(str(exc), EXIT_CONFIG)
    except OSError as exc:
        fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}", EXIT_CONFIG)
