"""What every command shares: exit codes, error output, loading Settings."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import RenderableType

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


def must_confirm(yes: bool, action: str) -> bool:
    """The one rule of destructive commands: with --yes they go ahead (False), on a terminal
    they ask (True), and anywhere else (a script, a pipe, CI) they are refused with exit 2
    rather than guessing what the caller meant."""
    if yes:
        return False
    if not sys.stdin.isatty():
        fail(
            f"{action} needs confirmation and standard input is not a terminal: "
            "pass --yes to go ahead without asking",
            EXIT_CONFIG,
        )
    return True


def confirm(question: str) -> None:
    """Ask on the terminal; no is exit 1 with nothing changed."""
    if not typer.confirm(question, default=False):
        fail("aborted; nothing was changed", EXIT_FAILED)


def install_hint(extra: str) -> str:
    """The command that installs knowctl's ``extra`` into the Python running this command:
    from the checkout when knowctl runs from one (``pip install -e``), else from the index."""
    import shlex

    root = Path(__file__).resolve().parent.parent.parent
    project = root / "pyproject.toml"
    try:
        from_checkout = 'name = "knowctl"' in project.read_text(encoding="utf-8")
    except OSError:
        from_checkout = False
    python = shlex.quote(sys.executable)
    if from_checkout:
        return f"{python} -m pip install -e {shlex.quote(f'{root}[{extra}]')}"
    return f"{python} -m pip install {shlex.quote(f'knowctl[{extra}]')}"


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
    _check_daemon_url(settings.url, "--url" if url is not None else "KNOWCTL_URL")
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


def _check_daemon_url(value: str, source: str) -> None:
    """A URL without its scheme (``127.0.0.1:8080``) is a typo, not an unreachable daemon."""
    from urllib.parse import urlsplit

    problem = None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        problem = str(exc)
    else:
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = "expected http://HOST:PORT or https://HOST"
    if problem is not None:
        guess = f" (did you mean http://{value}?)" if "://" not in value else ""
        fail(f"{source} {value!r} is not a daemon URL: {problem}{guess}", EXIT_CONFIG)


def print_json(data: Any) -> None:
    import json

    typer.echo(json.dumps(data, indent=None, sort_keys=True))


def show(
    fetch: Callable[[], dict[str, Any]],
    render: Callable[[dict[str, Any]], RenderableType],
    line: Callable[[dict[str, Any]], str],
    *,
    as_json: bool,
    watch: bool,
    interval: float,
) -> None:
    """Print what ``fetch`` gets: as JSON, as a Rich view (``render``), or with ``watch`` a live
    view redrawn every ``interval`` seconds until Ctrl-C; not on a terminal, where a redraw
    shows nothing, one ``line`` per interval instead."""
    if as_json and watch:
        fail("--json prints one document; it cannot be combined with --watch", EXIT_CONFIG)
    if as_json:
        print_json(fetch())
        return
    from rich.console import Console

    console = Console()
    if not watch:
        console.print(render(fetch()))
        return
    if not sys.stdout.isatty():
        _watch_lines(fetch, line, interval)
        return
    from rich.live import Live

    with Live(render(fetch()), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(fetch()), refresh=True)
        except KeyboardInterrupt:
            pass


def _watch_lines(
    fetch: Callable[[], dict[str, Any]], line: Callable[[dict[str, Any]], str], interval: float
) -> None:
    try:
        while True:
            typer.echo(line(fetch()))  # click flushes each line
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `| head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


WatchOption = Annotated[
    bool, typer.Option("--watch", help="Redraw live until Ctrl-C (not on a terminal: one line per interval).")
]
IntervalOption = Annotated[
    float, typer.Option("--interval", min=0.2, help="Seconds between redraws with --watch.")
]
