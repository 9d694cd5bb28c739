"""``knowctl quota``: the provider quota as the daemon sees it."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

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
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Redraw live until Ctrl-C (not on a terminal: one line per interval)."),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, help="Seconds between redraws with --watch.")
    ] = 2.0,
) -> None:
    """Usage, limits, reserved tokens, reset times, queue depth and decisions per model."""
    if as_json and watch:
        fail("--json prints one document; it cannot be combined with --watch", EXIT_CONFIG)
    params = {"model": model} if model else None
    with admin_client(url, token) as client:

        def fetch() -> dict[str, Any]:
            data: dict[str, Any] = client.call("GET", STATS_PATH, params=params)
            return data

        if as_json:
            print_json(fetch())
            return
        from rich.console import Console

        console = Console()
        if not watch:
            console.print(render(fetch()))
            return
        if not sys.stdout.isatty():
            # A live redraw shows nothing in a pipe or a log; a line per interval does.
            _watch_lines(fetch, interval)
            return
        from rich.live import Live

        with Live(render(fetch()), console=console, auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(render(fetch()), refresh=True)
            except KeyboardInterrupt:
                pass


def _watch_lines(fetch: Callable[[], dict[str, Any]], interval: float) -> None:
    try:
        while True:
            typer.echo(summary_line(fetch()))  # click flushes each line
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `| head`: the reader has seen enough
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


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


def _duration(seconds: float) -> str:
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
        label = name if not exhausted else f"{name} [red](held {_duration(exhausted['remaining_s'])})[/red]"
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
                _duration(float(w["reset_after_s"])),
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
