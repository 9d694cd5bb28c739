"""``knowctl simulate``: a Gemini-compatible simulator for development, tests and benchmarks.

It is not Google: answers are deterministic stand-ins (see :mod:`knowctl.simulator.answers`),
with Google's wire shapes, token usage and quota errors. It imports neither the daemon nor
the commands (an import contract): the daemon runs it beside itself with ``--simulate``.
"""

from knowctl.simulator.app import SimulatorApp, SimulatorConfig

__all__ = ["SimulatorApp", "SimulatorConfig"]
