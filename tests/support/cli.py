"""Run a knowctl command group in a real subprocess, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys


def _registered(group: str) -> bool:
    from knowctl.cli import app

    return any(g.name == group for g in app.registered_groups)


def run_knowctl(
    group: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m knowctl GROUP ARGS``; the group's own Typer app while cli.py does not list it yet."""
    if _registered(group):
        command = [sys.executable, "-m", "knowctl", group, *args]
    else:
        code = f"from knowctl.commands.{group} import app; app(prog_name='knowctl {group}')"
        command = [sys.executable, "-c", code, *args]
    return subprocess.run(
        command,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
