"""The deployment values: their schema (the root in ``schema``, sections in ``workloads``,
``kubernetes`` and ``compose``), how they load (``loading``), what they imply (``derived``) and
the cross-field checks of a target (``checks``)."""

from __future__ import annotations

from knowctl.deploy.values.base import ValuesError
from knowctl.deploy.values.loading import load_values, parse_set
from knowctl.deploy.values.schema import Values

__all__ = ["Values", "ValuesError", "load_values", "parse_set"]
