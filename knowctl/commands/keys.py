"""``knowctl keys``: gateway keys (create, list, revoke) through the daemon's admin API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from knowctl.commands.common import (
    JsonOption,
    TokenOption,
    UrlOption,
    admin_client,
    confirm,
    must_confirm,
    print_json,
)

if TYPE_CHECKING:
    from knowctl.client import AdminClient

app = typer.Typer(
    help="Gateway keys: who may call the gateway, as which user and tier.", no_args_is_help=True
)

KEYS_PATH = "/api/keys"


@app.command("create")
def create(
    user: Annotated[str, typer.Option("--user", help="User the key's calls count against.")],
    tier: Annotated[
        str | None, typer.Option("--tier", help="Tier, one of the config file's `tiers` (none by default).")
    ] = None,
    max_priority: Annotated[
        str | None, typer.Option("--max-priority", help="Highest priority: LOW, MEDIUM, HIGH or CRITICAL.")
    ] = None,
    trusted: Annotated[
        bool, typer.Option("--trusted", help="A backend that may name its own users in X-Knowctl-User.")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key and print it. The key is shown this once only: store it now."""
    body: dict[str, Any] = {"user": user, "trusted": trusted}
    if tier is not None:
        body["tier"] = tier
    if max_priority is not None:
        body["max_priority"] = max_priority
    with admin_client(url, token) as client:
        created = client.call("POST", KEYS_PATH, json=body)
        mode = _auth_mode(client, user)
    if mode is not None and mode != "keys":
        typer.secho(f"knowctl: warning: {_UNUSED_KEYS.get(mode, mode)}", err=True, fg=typer.colors.YELLOW)
    if as_json:
        print_json(created)
        return
    from rich.console import Console

    console = Console()
    console.print(f"Created key [bold]{created['key_id']}[/] for user [bold]{created['user']}[/].")
    # Printed plainly (no wrapping, no markup) so it can be copied whole.
    console.print("Key (shown once, store it now):", highlight=False)
    typer.echo(created["key"])


_UNUSED_KEYS = {
    mode: f"the daemon runs in {mode} auth mode, {how}, and it does not use gateway keys: this key "
    "admits nobody until the daemon runs with KNOWCTL_AUTH_MODE=keys"
    for mode, how in (
        ("anonymous", "where callers are told apart by their address"),
        ("passthrough", "where callers bring their own Google credentials"),
    )
}


def _auth_mode(client: AdminClient, user: str) -> str | None:
    """The daemon's auth mode (from the key listing, which names it), or None if it cannot say."""
    from knowctl.client import AdminCallFailed

    try:
        listing = client.call("GET", KEYS_PATH, params={"user": user})
    except AdminCallFailed:
        return None
    mode = listing.get("auth_mode") if isinstance(listing, dict) else None
    return mode if isinstance(mode, str) else None


@app.command("list")
def list_keys(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's keys.")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List keys (ids and settings; never the keys themselves)."""
    params = {"user": user} if user else None
    with admin_client(url, token) as client:
        listing = client.call("GET", KEYS_PATH, params=params)
    if as_json:
        print_json(listing)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Gateway keys (auth mode: {listing.get('auth_mode', '?')})")
    for column in ("Key id", "User", "Tier", "Max priority", "Trusted", "Created", "Status"):
        table.add_column(column)
    for record in listing["keys"]:
        status = f"[red]revoked {record['revoked']}[/]" if record["revoked"] else "[green]active[/]"
        table.add_row(
            record["key_id"],
            record["user"],
            record["tier"] or "-",
            record["max_priority"] or "-",
            "yes" if record["trusted"] else "no",
            record["created"],
            status,
        )
    Console().print(table)


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="Id of the key (from `knowctl keys list`).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke a key: every daemon refuses it (403) within about a second."""
    if must_confirm(yes, "keys revoke"):
        confirm(f"Revoke key {key_id}? Its callers will be refused.")
    with admin_client(url, token) as client:
        record = client.call("DELETE", f"{KEYS_PATH}/{key_id}")
    if as_json:
        print_json(record)
        return
    typer.echo(f"Revoked key {record['key_id']} of user {record['user']}.")
