"""``knowctl cache``: invalidate cached answers by pattern, and the cache's statistics."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from knowctl.commands.common import (
    EXIT_CONFIG,
    JsonOption,
    TokenOption,
    UrlOption,
    admin_client,
    fail,
    print_json,
)

app = typer.Typer(help="The answer cache: invalidation and statistics.", no_args_is_help=True)

INVALIDATE_PATH = "/api/cache/invalidate"
STATS_PATH = "/api/cache/stats"


@app.command("invalidate")
def invalidate(
    pattern: Annotated[
        str, typer.Argument(help="Cache key or glob, e.g. 'topic:*' or 'topic:photosynthesis:*' ('*', '?').")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count the matching keys and show a sample.")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="Remove at most this many keys (0: all of them).")
    ] = 100,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove cached answers (and their stale copies) matching PATTERN from every daemon."""
    from knowctl.policy.cachekey import BadPattern, check_pattern

    try:
        check_pattern(pattern)
    except BadPattern as exc:
        fail(f"pattern: {exc}", EXIT_CONFIG)
    with admin_client(url, token) as client:
        if not dry_run and not yes and sys.stdin.isatty():
            preview = client.call("POST", INVALIDATE_PATH, json={"pattern": pattern, "dry_run": True})
            _print_result(preview)
            if preview["matched"] == 0:
                return
            count = preview["matched"] if limit == 0 else min(limit, preview["matched"])
            if not typer.confirm(f"Remove {count} cached answer(s)?", default=False):
                raise typer.Exit(1)
        result = client.call(
            "POST", INVALIDATE_PATH, json={"pattern": pattern, "dry_run": dry_run, "limit": limit}
        )
    if as_json:
        print_json(result)
        return
    _print_result(result)


def _print_result(result: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    if result["dry_run"]:
        console.print(f"[bold]{result['matched']}[/] key(s) match [bold]{result['pattern']}[/] (dry run).")
    else:
        console.print(
            f"Removed [bold]{result['deleted']}[/] of {result['matched']} matching key(s); "
            f"[bold]{result['remaining']}[/] remain."
        )
        if result["remaining"]:
            console.print("Run again (or with --limit 0) to remove the rest.")
    if result["sample"] and result["dry_run"]:
        console.print("Sample:")
        for key in result["sample"]:
            console.print(f"  {key}", highlight=False)


@app.command("stats")
def stats(url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Hits, misses and hit rate per layer, entries, bytes, evictions, invalidations, coalescing."""
    with admin_client(url, token) as client:
        data = client.call("GET", STATS_PATH)
    if as_json:
        print_json(data)
        return
    from rich.console import Console
    from rich.table import Table

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    table = Table(title="Answer cache (this daemon)")
    for column in ("Layer", "Hits", "Misses", "Hit rate", "Entries", "Bytes", "Evictions", "TTL"):
        table.add_column(column, justify="right")
    l1, l2 = data["layers"]["l1"], data["layers"]["l2"]
    table.add_row(
        "L1 (process)",
        str(l1["hits"]),
        str(l1["misses"]),
        rate(l1["hit_rate"]),
        str(l1["entries"]),
        str(l1["bytes"]),
        str(l1["evictions"]),
        f"{l1['ttl_s']:g}s",
    )
    shared = "shared" if data["store"]["shared"] else "process"
    table.add_row(
        f"L2 ({data['store']['backend']}, {shared})",
        str(l2["hits"]),
        str(l2["misses"]),
        rate(l2["hit_rate"]),
        "-",
        "-",
        "-",
        f"{l2['ttl_s']:g}s",
    )
    console = Console()
    console.print(table)
    console.print(
        f"Overall hit rate {rate(data['hit_rate'])}; stale served {data['stale_served']}; "
        f"coalesced {data['coalesced']}; invalidations {data['invalidations']} "
        f"({data['invalidated_keys']} keys); refused saves {data['refused_saves']}."
    )
    if data["degraded"]:
        console.print("[yellow]Degraded: the shared store is not answering; serving from L1 only.[/]")
