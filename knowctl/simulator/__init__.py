"""``knowctl simulate``: a Gemini-compatible simulator for development, tests and benchmarks.

It is not Google: answers are deterministic stand-ins (see :mod:`knowctl.simulator.answers`),
with Google's wire shapes, token usage and quota errors. ``python -m knowctl.simulator``
runs the same command as ``knowctl simulate``.
"""

from knowctl.simulator.app import SimulatorApp, SimulatorConfig

__all__ = ["SimulatorApp", "SimulatorConfig"]
