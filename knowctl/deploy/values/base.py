"""The values schema's common ground: ValuesError, the strict section base, dotted key names."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ValuesError(ValueError):
    """Values that cannot be rendered; the message names every offending key."""


class StrictSection(BaseModel):
    """A section of the values; unknown keys are typos: rejected rather than silently defaulted."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def dotted_key(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the dotted key a values file or ``--set`` names."""
    return ".".join(str(p) for p in loc) or "values"
