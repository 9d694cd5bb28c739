"""What every command shares: exit codes, error output, loading Settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer

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
