"""``knowctl topics``: popular topics, and pre-warming topic content."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from knowctl.commands.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    JsonOption,
    TokenOption,
    UrlOption,
    admin_client,
    fail,
    print_json,
)

app = typer.Typer(help="The topic API: popular topics and pre-warming.", no_args_is_help=True)

POPULAR_PATH = "/api/topics/popular"
PREWARM_PATH = "/api/topics/prewarm"
STATUSES = ("generated", "fresh", "failed")


@app.command("popular")
def popular(url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Topics by requests in the popularity window; popular ones are refreshed in the background."""
    with admin_client(url, token) as client:
        data = client.call("GET", POPULAR_PATH)
    if as_json:
        print_json(data)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Topics (popular: >= {data['threshold']} requests in {data['window_s']:g}s)")
    for column in ("Topic", "Requests", "Popular"):
        table.add_column(column)
    for row in data["topics"]:
        table.add_row(row["topic"], str(row["requests"]), "[green]yes[/]" if row["popular"] else "no")
    Console().print(table)


def _read_topics(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", EXIT_CONFIG)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@app.command("prewarm")
def prewarm(
    topics: Annotated[list[str] | None, typer.Argument(help="Topics to generate now.")] = None,
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="A file with one topic per line ('#' comments).")
    ] = None,
    popular_too: Annotated[
        bool, typer.Option("--popular", help="Also the currently popular topics.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Regenerate even topics that are still fresh.")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Generate topic content ahead of requests; reports what was generated, already fresh, or failed."""
    from knowctl.policy.cachekey import check_topic

    wanted = list(topics or [])
    if from_file is not None:
        wanted += _read_topics(from_file)
    results: list[dict[str, Any]] = []
    with admin_client(url, token) as client:
        if popular_too:
            listing = client.call("GET", POPULAR_PATH)
            wanted += [row["topic"] for row in listing["topics"] if row["popular"]]
        wanted = list(dict.fromkeys(wanted))
        if not wanted:
            fail("no topics: name some, or use --from-file / --popular", EXIT_CONFIG)
        for topic in wanted:
            try:
                check_topic(topic)
            except ValueError as exc:
                fail(str(exc), EXIT_CONFIG)
        from rich.progress import Progress

        with Progress(transient=True, disable=as_json) as progress:
            task = progress.add_task("Pre-warming topics", total=len(wanted))
            for topic in wanted:  # one call per topic: progress as it goes, no long request
                progress.update(task, description=f"Pre-warming {topic}")
                answer = client.call("POST", PREWARM_PATH, json={"topics": [topic], "force": force})
                results.extend(answer["results"])
                progress.advance(task)
    summary = {status: sum(1 for r in results if r["status"] == status) for status in STATUSES}
    if as_json:
        print_json({"results": results, "summary": summary})
    else:
        _print_summary(results, summary)
    if summary["failed"]:
        raise typer.Exit(EXIT_FAILED)


def _print_summary(results: list[dict[str, Any]], summary: dict[str, int]) -> None:
    from rich.console import Console
    from rich.table import Table

    colours = {"generated": "green", "fresh": "cyan", "failed": "red"}
    table = Table(title="Pre-warm results")
    for column in ("Topic", "Status", "Detail"):
        table.add_column(column)
    for r in results:
        status = r["status"]
        label = "already fresh" if status == "fresh" else status
        table.add_row(r["topic"], f"[{colours[status]}]{label}[/]", r.get("error", ""))
    console = Console()
    console.print(table)
    console.print(
        f"Generated {summary['generated']}, already fresh {summary['fresh']}, failed {summary['failed']}."
    )
