"""``knowctl quota``: the provider quota as the daemon sees it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from knowctl.commands.common import (
    IntervalOption,
    JsonOption,
    TokenOption,
    UrlOption,
    WatchOption,
    admin_client,
    show,
)

if TYPE_CHECKING:
    from rich.console import Group

app = typer.Typer(help="Provider quota: usage per model and window, queue, decisions.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Provider quota: usage per model and window, queue, decisions."""


STATS_PATH = "/api/quota/stats"
BAR_WIDTH = 20


@app.command("stats")
def stats(
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Only this model (also one this daemon has not served yet)."),
    ] = None,
    watch: WatchOption = False,
    interval: IntervalOption = 2.0,
) -> None:
    """Usage, limits, reserved tokens, reset times, queue depth and decisions per model."""
    params = {"model": model} if model else None
    with admin_client(url, token) as client:

        def fetch() -> dict[str, Any]:
            data: dict[str, Any] = client.call("GET", STATS_PATH, params=params)
            return data

        show(fetch, render, summary_line, as_json=as_json, watch=watch, interval=interval)


def summary_line(data: dict[str, Any]) -> str:
    """One plain line of the stats document: time, then each model's windows used/limit, queue
    depth and decisions (admitted/queued/refused/fallback), then the shared queue and store."""
    from datetime import UTC, datetime

    parts = [datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]
    for name, model in data.get("models", {}).items():
        windows = model.get("windows", {})
        usage = " ".join(f"{w}={v['used']}/{v['limit']}" for w, v in windows.items()) or "unlimited"
        counts = model.get("counts", {})
        decisions = "/".join(str(counts.get(k, 0)) for k in ("admitted", "queued", "refused", "fallback"))
        depth = sum(int(v) for v in model.get("queue", {}).values())
        held = " held" if model.get("exhausted") else ""
        parts.append(f"{name}: {usage} queued={depth} decisions={decisions}{held};")
    queue = data.get("queue", {})
    parts.append(f"waiting={queue.get('waiting', 0)}/{queue.get('size', '?')} store={data.get('store', '?')}")
    if data.get("degraded"):
        parts.append("DEGRADED")
    return " ".join(parts)


def usage_bar(used: int, limit: int, width: int = BAR_WIDTH) -> str:
    """``[######--------------]`` with Rich colour markup: green, yellow past 75%, red when full."""
    fraction = min(1.0, used / limit) if limit else 1.0
    filled = round(fraction * width)
    colour = "red" if fraction >= 1 else "yellow" if fraction >= 0.75 else "green"
    return f"[{colour}]{'█' * filled}[/{colour}][dim]{'░' * (width - filled)}[/dim]"


def duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render(data: dict[str, Any]) -> Group:
    """The stats document as a Rich table plus a one-line summary."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title="provider quota",
        caption="queue: critical/high/medium/low; decisions: admitted/queued/refused/fallback",
        expand=False,
    )
    for column in ("model", "window", "usage", "used", "reserved", "limit", "remaining", "resets in"):
        table.add_column(column, justify="left" if column in ("model", "window", "usage") else "right")
    table.add_column("queue", justify="right")
    table.add_column("decisions", justify="right")
    for name, model in data.get("models", {}).items():
        queue = model.get("queue", {})
        depth = "/".join(str(queue.get(p, 0)) for p in ("CRITICAL", "HIGH", "MEDIUM", "LOW"))
        counts = model.get("counts", {})
        decisions = "/".join(str(counts.get(k, 0)) for k in ("admitted", "queued", "refused", "fallback"))
        exhausted = model.get("exhausted")
        label = name if not exhausted else f"{name} [red](held {duration(exhausted['remaining_s'])})[/red]"
        windows = model.get("windows", {})
        if not windows:
            table.add_row(label, "-", "[dim]unlimited[/dim]", "", "", "", "", "", depth, decisions)
            continue
        for i, (wname, w) in enumerate(windows.items()):
            table.add_row(
                label if i == 0 else "",
                wname,
                usage_bar(int(w["used"]), int(w["limit"])),
                str(w["used"]),
                str(w["reserved"]),
                str(w["limit"]),
                str(w["remaining"]),
                duration(float(w["reset_after_s"])),
                depth if i == 0 else "",
                decisions if i == 0 else "",
            )
    queue = data.get("queue", {})
    degraded = " [bold red](DEGRADED: shared store unreachable, local limits)[/bold red]"
    summary = Text.from_markup(
        f"store: {data.get('store', '?')}"
        + (degraded if data.get("degraded") else "")
        + f"   tokens counted: {data.get('tokens', '?')}"
        + f"   waiting: {queue.get('waiting', 0)}/{queue.get('size', '?')}"
    )
    if not data.get("models"):
        return Group(summary, Text("no model has been called yet and none has configured limits"))
    return Group(table, summary)
