"""``knowctl config``: the effective settings, and the reference of every option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from knowctl.commands.common import settings_or_exit

app = typer.Typer(help="Show the effective settings and the reference of every option.", no_args_is_help=True)


@app.command("show")
def show(
    config: Annotated[Path | None, typer.Option("--config", help="YAML config file.", dir_okay=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for scripts.")] = False,
) -> None:
    """The settings the daemon would run with here (secrets shown as set or unset, never their
    value; passwords inside URLs as ***)."""
    values = settings_or_exit(config).redacted()
    if as_json:
        typer.echo(json.dumps(values))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("setting", "value", title="knowctl settings")
    for name, value in values.items():
        table.add_row(name, "unset" if value is None else str(value))
    Console().print(table)


@app.command("reference")
def reference(
    write: Annotated[
        Path | None, typer.Option("--write", help="Update the reference section of this Markdown file.")
    ] = None,
) -> None:
    """Print (or write into a Markdown file) the table of every setting and its env var."""
    from knowctl.settings_doc import reference_table, splice

    if write is None:
        typer.echo(reference_table(), nl=False)
        return
    write.write_text(splice(write.read_text(encoding="utf-8")), encoding="utf-8")
    typer.echo(f"updated {write}")
