"""``knowctl deploy``: render, validate, build and inspect deployments.

Only Typer is imported at module level; jinja2, yaml, jsonschema, kubernetes-validate and
the Docker SDK load inside the command that needs them, so ``knowctl --help`` stays fast.
Exit codes: 0 ok, 1 validation or build failed (or could not run: a validator or the Docker SDK
is not installed), 2 bad values or usage, 3 no Docker engine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from knowctl.commands.common import EXIT_CONFIG, EXIT_FAILED, EXIT_UNREACHABLE, fail, install_hint

app = typer.Typer(
    help="Render, validate, build and inspect Kubernetes and Compose deployments.",
    no_args_is_help=True,
)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


@app.command()
def render(
    target: Annotated[str, typer.Option("--target", "-t", help="k8s or compose.")],
    values: Annotated[Path | None, typer.Option("--values", "-f", help="YAML values file.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override one value: key.path=value (repeatable).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write files here (else YAML to stdout).")
    ] = None,
    templates: Annotated[
        Path | None, typer.Option("--templates", help="Template root (default: bundled).")
    ] = None,
) -> None:
    """Render the templates with validated values."""
    from knowctl.deploy.render import render as do_render
    from knowctl.deploy.render import to_stream, write
    from knowctl.deploy.templates import TemplatesNotFound
    from knowctl.deploy.values.base import ValuesError
    from knowctl.deploy.values.loading import load_values

    if target not in ("k8s", "compose"):
        fail(f"--target must be k8s or compose, not {target!r}", EXIT_CONFIG)
    try:
        vals = load_values(values, set_ or [])
        files = do_render("k8s" if target == "k8s" else "compose", vals, templates)
    except ValuesError as exc:
        fail(f"invalid values: {exc}", EXIT_CONFIG)
    except TemplatesNotFound as exc:
        fail(str(exc), EXIT_CONFIG)
    if out is None:
        stream, skipped = to_stream(files)
        sys.stdout.write(stream)
        if skipped:
            _console(stderr=True).print(f"[dim]not YAML, written only with --out: {', '.join(skipped)}[/]")
        return
    written = write(files, out)
    console = _console()
    for path in written:
        console.print(f"[green]wrote[/] {path}")
    if target == "compose":
        console.print(
            "[yellow]next:[/] put the secret files under secrets/ (see docker-compose.yml), then "
            "[bold]docker compose up -d[/]"
        )


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="A rendered file or folder.")],
    k8s_version: Annotated[
        list[str] | None,
        typer.Option(
            "--k8s-version",
            help="Kubernetes version(s) to check against (default: 1.30 and the newest known).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
) -> None:
    """Strict schema validation and policy checks; exit 1 on any problem."""
    from knowctl.deploy.validate import ValidatorMissing, validate_path

    try:
        report = validate_path(path, k8s_version or None)
    except ValidatorMissing as exc:
        # Nothing was validated: a failure (exit 1), not bad input, so a pipeline never passes.
        fail(f"{exc}, nothing was validated; install the deploy extra: {install_hint('deploy')}", EXIT_FAILED)
    if as_json:
        problems = [{"subject": p.subject, "rule": p.rule, "message": p.message} for p in report.problems]
        typer.echo(json.dumps({"ok": report.ok, "checked": report.checked, "problems": problems}, indent=2))
    else:
        from rich.table import Table

        console = _console()
        if report.problems:
            table = Table("object", "rule", "problem", title="Validation problems", title_justify="left")
            for p in report.problems:
                table.add_row(p.subject, p.rule, p.message)
            console.print(table)
        elif not report.checked:
            console.print(f"[red]nothing to validate in {path}[/] (no Kubernetes object or Compose file)")
        console.print(
            f"{len(report.checked)} object(s) checked, {len(report.problems)} problem(s): "
            + ("[green]ok[/]" if report.ok else "[red]failed[/]")
        )
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _docker_sdk_missing() -> NoReturn:
    fail(f"the Docker SDK is not installed; install the deploy extra: {install_hint('deploy')}", EXIT_FAILED)


def _build_args(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--build-arg {item!r}: expected KEY=VALUE", EXIT_CONFIG)
        out[key] = value
    return out


@app.command()
def build(
    tag: Annotated[str | None, typer.Option("--tag", help="Image tag (default knowctl:<version>).")] = None,
    build_arg: Annotated[
        list[str] | None, typer.Option("--build-arg", help="KEY=VALUE build argument (repeatable).")
    ] = None,
    context: Annotated[Path, typer.Option("--context", help="Build context folder.")] = Path("."),
    dockerfile: Annotated[
        str, typer.Option("--file", help="Dockerfile, relative to the context.")
    ] = "Dockerfile",
    network: Annotated[
        str | None, typer.Option("--network", help="Network mode for RUN steps (e.g. none).")
    ] = None,
    pull: Annotated[bool, typer.Option("--pull", help="Always pull newer base images.")] = False,
) -> None:
    """Build the gateway image with the Docker engine, streaming its progress."""
    from knowctl import __version__
    from knowctl.deploy.docker_ops import BuildFailed, DockerSdkMissing, EngineUnreachable
    from knowctl.deploy.docker_ops import build as do_build

    args = _build_args(build_arg or [])
    if not (context / dockerfile).is_file():
        fail(f"no {dockerfile} in build context {context}", EXIT_CONFIG)
    image = tag or f"knowctl:{__version__}"
    console = _console()
    try:
        image_id = do_build(
            context,
            image,
            dockerfile,
            args,
            network,
            pull,
            on_line=lambda line: console.print(line, markup=False, highlight=False),
        )
    except DockerSdkMissing:
        _docker_sdk_missing()
    except EngineUnreachable as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    except BuildFailed as exc:
        fail(f"build failed: {exc}", EXIT_FAILED)
    console.print(f"[green]built[/] {image} ({image_id})")


@app.command()
def status(
    project: Annotated[str, typer.Option("--project", "-p", help="Compose project name.")] = "knowctl",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The Compose project's containers with their state and health."""
    from knowctl.deploy.docker_ops import DockerSdkMissing, EngineUnreachable, project_status

    try:
        containers = project_status(project)
    except DockerSdkMissing:
        _docker_sdk_missing()
    except EngineUnreachable as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    if as_json:
        typer.echo(json.dumps([c.__dict__ for c in containers], indent=2))
        return
    from rich.table import Table

    console = _console()
    if not containers:
        console.print(f"no containers in Compose project [bold]{project}[/]")
        return
    colours = {
        "running": "green",
        "healthy": "green",
        "exited": "red",
        "unhealthy": "red",
        "starting": "yellow",
    }
    table = Table("service", "#", "container", "state", "health", "image", title=f"Compose project {project}")
    for c in containers:
        table.add_row(
            c.service,
            c.number,
            c.name,
            f"[{colours.get(c.state, 'white')}]{c.state}[/]",
            f"[{colours.get(c.health, 'white')}]{c.health}[/]",
            c.image,
        )
    console.print(table)
