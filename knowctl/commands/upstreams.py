"""``knowctl upstreams``: the pool of upstream deployments as the daemon sees it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from knowctl.commands.common import (
    IntervalOption,
    JsonOption,
    TokenOption,
    UrlOption,
    WatchOption,
    admin_client,
    show,
)
from knowctl.commands.quota import duration, usage_bar

if TYPE_CHECKING:
    from rich.console import Group

UPSTREAMS_PATH = "/api/upstreams"


def upstreams(
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    watch: WatchOption = False,
    interval: IntervalOption = 2.0,
) -> None:
    """Each deployment and model: windows used/limit, health, held until, share of traffic."""
    with admin_client(url, token) as client:

        def fetch() -> dict[str, Any]:
            data: dict[str, Any] = client.call("GET", UPSTREAMS_PATH)
            return data

        show(fetch, render, summary_line, as_json=as_json, watch=watch, interval=interval)


def _windows(model: dict[str, Any]) -> str:
    windows = model.get("windows", {})
    return " ".join(f"{w}={v['used']}/{v['limit']}" for w, v in windows.items()) or "undeclared"


def summary_line(data: dict[str, Any]) -> str:
    """One plain line: time, then per deployment and model its windows, health and share."""
    from datetime import UTC, datetime

    parts = [datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]
    for d in data.get("deployments", []):
        for name, model in d.get("models", {}).items():
            share = model.get("share_1m")
            learned = model.get("learned")
            taught = f" learned={learned['limit']:g}" if learned else ""
            parts.append(
                f"{d['name']}/{name}: {_windows(model)}{taught} {model.get('health', '?')}"
                f" share={'-' if share is None else f'{share:.0%}'};"
            )
    return " ".join(parts)


def render(data: dict[str, Any]) -> Group:
    """The pool as a Rich table: one row per deployment, model and window."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title="upstream deployments", caption="share: of this daemon's calls in the last minute")
    columns = (
        "deployment",
        "model",
        "window",
        "usage",
        "used",
        "limit",
        "learned",
        "health",
        "held for",
        "share",
    )
    for column in columns:
        left = column in ("deployment", "model", "window", "usage", "health")
        table.add_column(column, justify="left" if left else "right")
    for d in data.get("deployments", []):
        where = f"{d['name']} [dim]({d.get('family')}, order {d.get('order', 0)})[/dim]"
        models = d.get("models", {})
        if not models:
            table.add_row(where, "[dim]no calls yet[/dim]", *[""] * 8)
            continue
        first = True
        for name, model in models.items():
            held = model.get("held")
            health = {"ok": "[green]ok[/green]", "failing": "[yellow]failing[/yellow]"}.get(
                model.get("health", ""), "[red]held[/red]"
            )
            share = model.get("share_1m")
            learned = model.get("learned")
            taught = "-"
            if learned:
                taught = f"{learned['limit']:g}" + (" [dim](probing)[/dim]" if learned["probing"] else "")
            cells = (
                taught,
                health,
                duration(held["remaining_s"]) if held else "-",
                "-" if share is None else f"{share:.0%}",
            )
            windows = model.get("windows", {}) or {"-": None}
            for i, (wname, w) in enumerate(windows.items()):
                usage = usage_bar(int(w["used"]), int(w["limit"])) if w else "[dim]undeclared[/dim]"
                table.add_row(
                    where if first else "",
                    name if i == 0 else "",
                    wname,
                    usage,
                    str(w["used"]) if w else "",
                    str(w["limit"]) if w else "",
                    *(cells if i == 0 else ("", "", "", "")),
                )
                first = False
    note = (
        ""
        if data.get("pooled")
        else "one upstream (no deployments configured: see upstreams in the configuration)"
    )
    return Group(table, Text(note)) if note else Group(table)
