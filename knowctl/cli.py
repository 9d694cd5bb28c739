"""The ``knowctl`` command: one Typer app, one sub-app per command group.

Command modules import only Typer at module level; everything heavy (uvicorn, redis,
google-auth, httpx) is imported inside the command that needs it, so ``knowctl --help``
stays fast.
"""

from __future__ import annotations

import typer

from knowctl import __version__
from knowctl.commands import cache as cache_cmd
from knowctl.commands import config as config_cmd
from knowctl.commands import deploy as deploy_cmd
from knowctl.commands import keys as keys_cmd
from knowctl.commands import quota as quota_cmd
from knowctl.commands import serve as serve_cmd
from knowctl.commands import simulate as simulate_cmd
from knowctl.commands import topics as topics_cmd
from knowctl.commands import upstreams as upstreams_cmd
from knowctl.commands import users as users_cmd

app = typer.Typer(
    name="knowctl",
    help="Quota-and-cache gateway for Google's Gemini models, and the tool that runs it.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"knowctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Quota-and-cache gateway for Google's Gemini models, and the tool that runs it."""


app.command("serve")(serve_cmd.serve)
app.command("simulate")(simulate_cmd.simulate)
app.add_typer(quota_cmd.app, name="quota")
app.command("upstreams")(upstreams_cmd.upstreams)
app.add_typer(cache_cmd.app, name="cache")
app.add_typer(topics_cmd.app, name="topics")
app.add_typer(keys_cmd.app, name="keys")
app.add_typer(users_cmd.app, name="users")
app.add_typer(config_cmd.app, name="config")
app.add_typer(deploy_cmd.app, name="deploy")


def main() -> None:
    app()
