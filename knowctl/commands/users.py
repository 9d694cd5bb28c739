"""``knowctl users``: per-user limit usage through the daemon's admin API."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

from knowctl.commands.common import JsonOption, TokenOption, UrlOption, admin_client, print_json

app = typer.Typer(help="Callers: how much of their limits users have used.", no_args_is_help=True)


@app.command("usage")
def usage(
    name: Annotated[
        str, typer.Argument(help="A key's user, owner:session, an address, or a pass-through cred- name.")
    ],
    tier: Annotated[str | None, typer.Option("--tier", help="Read with this tier's limits.")] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="key, passthrough or anonymous: which kind of caller NAME is (each counts apart). "
            "Default: from the name's form (an address is anonymous, cred-... pass-through).",
        ),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Used, limit, remaining and reset time of each of the user's windows."""
    params = {k: v for k, v in (("tier", tier), ("kind", kind)) if v}
    with admin_client(url, token) as client:
        found = client.call("GET", f"/api/users/{quote(name, safe='')}/usage", params=params or None)
    if as_json:
        print_json(found)
        return
    from rich.console import Console
    from rich.table import Table

    from knowctl.commands.quota import usage_bar

    kind_shown = {"anonymous": "address ", "passthrough": "credential "}.get(found.get("kind", ""), "")
    title = f"Usage of {kind_shown}{found['user']}" + (
        f" (tier {found['tier']})" if found.get("tier") else ""
    )
    table = Table(title=title)
    for column in ("Window", "Used", "Limit", "Remaining", "Resets in", ""):
        table.add_column(column, justify="right" if column in ("Used", "Limit", "Remaining") else "left")
    for row in found["windows"]:
        reset = f"{row['reset_s']:.0f}s" if row["reset_s"] > 0 else "-"
        table.add_row(
            row["window"],
            str(row["used"]),
            str(row["limit"]),
            str(row["remaining"]),
            reset,
            usage_bar(row["used"], row["limit"]),
        )
    console = Console()
    if not found["windows"]:
        console.print(f"No per-user limits apply to {found['user']}.")
        return
    console.print(table)
    if found.get("degraded"):
        console.print("[yellow]The store is unavailable: these are this daemon's own counts.[/]")
