"""``knowctl cache``: invalidate cached answers by pattern, and the cache's statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from knowctl.commands.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    JsonOption,
    TokenOption,
    UrlOption,
    admin_client,
    confirm,
    fail,
    must_confirm,
    print_json,
)

if TYPE_CHECKING:
    from knowctl.client import AdminClient

app = typer.Typer(help="The answer cache: invalidation and statistics.", no_args_is_help=True)

INVALIDATE_PATH = "/api/cache/invalidate"
STATS_PATH = "/api/cache/stats"
EXTRA_CALLS = 10


@app.command("invalidate")
def invalidate(
    pattern: Annotated[
        str, typer.Argument(help="Cache key or glob, e.g. 'topic:*' or 'topic:photosynthesis:*' ('*', '?').")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count the matching keys and show a sample.")
    ] = False,
    batch: Annotated[
        int,
        typer.Option(
            "--batch",
            "--limit",
            min=0,
            help="Keys removed per call to the daemon (0: all in one call). The command goes on "
            "until no key matches.",
        ),
    ] = 100,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove cached answers (and their stale copies) matching PATTERN from the store and from
    every daemon's memory; exit 1 if some still match at the end."""
    from knowctl.policy.cachekey import BadPattern, check_pattern

    try:
        check_pattern(pattern)
    except BadPattern as exc:
        fail(f"pattern: {exc}", EXIT_CONFIG)
    ask = not dry_run and must_confirm(yes, "cache invalidate")  # before any call to the daemon
    with admin_client(url, token) as client:
        if dry_run:
            result = client.call("POST", INVALIDATE_PATH, json={"pattern": pattern, "dry_run": True})
        else:
            if ask:
                preview = client.call("POST", INVALIDATE_PATH, json={"pattern": pattern, "dry_run": True})
                _print_result(preview)
                if preview["matched"] == 0:
                    return
                confirm(f"Remove {preview['matched']} cached answer(s) from every daemon?")
            result = _invalidate_all(client, pattern, batch)
    if as_json:
        print_json(result)
    else:
        _print_result(result)
    if not dry_run and result["remaining"]:
        fail(
            f"{result['remaining']} matching key(s) remain after {result['calls']} call(s): answers "
            "matching the pattern are being cached as fast as they are removed; run it again",
            EXIT_FAILED,
        )


def _invalidate_all(client: AdminClient, pattern: str, batch: int) -> dict[str, Any]:
    """Call the daemon until nothing matches. The last call removes every match at once, so the
    daemon also tells every other daemon to drop the whole pattern from memory."""
    from knowctl.client import AdminCallFailed

    body = {"pattern": pattern, "dry_run": False, "limit": batch}
    deleted = calls = 0
    matched: int | None = None
    most_calls = 1
    while True:
        try:
            answer = client.call("POST", INVALIDATE_PATH, json=body)
        except AdminCallFailed:
            if deleted:
                typer.echo(f"knowctl: {deleted} key(s) were removed before this failure", err=True)
            raise
        calls += 1
        deleted += answer["deleted"]
        if matched is None:
            matched = answer["matched"]
            # Enough calls for what matched at the start, and a few for answers cached meanwhile.
            most_calls = (-(-matched // batch) if batch else 1) + EXTRA_CALLS
        if not answer["remaining"] or not answer["deleted"] or calls >= most_calls:
            break
    return {
        "pattern": pattern,
        "dry_run": False,
        "matched": matched,
        "deleted": deleted,
        "remaining": answer["remaining"],
        "calls": calls,
        "sample": [],
    }


def _print_result(result: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    if result["dry_run"]:
        console.print(f"[bold]{result['matched']}[/] key(s) match [bold]{result['pattern']}[/] (dry run).")
    else:
        calls = result.get("calls", 1)
        where = "the store and every daemon's memory" + (f" in {calls} calls" if calls > 1 else "")
        console.print(
            f"Removed [bold]{result['deleted']}[/] matching key(s) from {where}; "
            f"[bold]{result['remaining']}[/] remain."
        )
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
