"""``python -m knowctl.simulator``: the same command as ``knowctl simulate``."""

import typer

from knowctl.commands.simulate import simulate

typer.run(simulate)
