"""What every command shares: exit codes, error output, loading Settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from knowctl.client import AdminClient
    from knowctl.settings import Settings

# Exit codes that mean something to scripts.
EXIT_OK = 0
EXIT_FAILED = 1  # the operation ran and failed (validation failed, refused)
EXIT_CONFIG = 2  # bad settings, flags or input
EXIT_UNREACHABLE = 3  # the daemon or the Docker engine could not be reached
EXIT_AUTH = 4  # the daemon refused the admin token


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.secho(f"knowctl: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def settings_or_exit(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from flags, env and file; a bad value is a clear message and exit 2."""
    from pydantic import ValidationError

    from knowctl.settings import ConfigError, load_settings

    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        fail(f"invalid settings: {problems}", EXIT_CONFIG)


# --- admin commands: options every one of them takes, and the client -----------------------

UrlOption = Annotated[
    str | None, typer.Option("--url", help="Daemon URL \\[env KNOWCTL_URL; default http://127.0.0.1:8080].")
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Admin token \\[env KNOWCTL_ADMIN_TOKEN or KNOWCTL_ADMIN_TOKEN_FILE].",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document, for scripts.")]


@contextmanager
def admin_client(url: str | None, token: str | None) -> Iterator[AdminClient]:
    """A client for the daemon's admin API; every failure becomes a clear message and exit code."""
    from knowctl.client import AdminCallFailed, AdminClient, DaemonUnreachable

    settings = settings_or_exit(url=url, admin_token=token)
    secret = settings.admin_token.get_secret_value() if settings.admin_token else None
    client = AdminClient(settings.url, secret)
    try:
        yield client
    except DaemonUnreachable as exc:
        fail(f"{exc}\nIs `knowctl serve` running there? Set --url or KNOWCTL_URL.", EXIT_UNREACHABLE)
    except AdminCallFailed as exc:
        if exc.status in (401, 403):
            fail(f"the daemon refused the admin call ({exc.status}): {exc.message}", EXIT_AUTH)
        fail(
            f"the daemon answered {exc.status}: {exc.message}",
            EXIT_CONFIG if exc.status < 500 else EXIT_FAILED,
        )
    finally:
        client.close()


def print_json(data: Any) -> None:
    import json

    typer.echo(json.dumps(data, indent=None, sort_keys=True))
