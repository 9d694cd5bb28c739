"""The configuration reference, generated from Settings so that it cannot drift."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from knowctl.settings import (
    ENV_PREFIX,
    SECRET_FIELDS,
    DeploymentModel,
    Settings,
    TierLimits,
    UpstreamDeployment,
)

START = "<!-- settings-reference:start -->"
END = "<!-- settings-reference:end -->"


def _default_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, dict | list | tuple | set | frozenset) and not value:
        return "empty"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"`{value}`"


def reference_table() -> str:
    """A Markdown table: one row per setting, env var, default and meaning."""
    rows = ["| env var | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        env = f"`{ENV_PREFIX}{name.upper()}`"
        if name in SECRET_FIELDS:
            env += f" or `{ENV_PREFIX}{name.upper()}_FILE`"
        description = (field.description or "").replace("|", "\\|")
        # A default_factory field (tiers, quota_models) has no ``default``: its value is the
        # factory's, what a Settings() without input holds.
        default = field.get_default(call_default_factory=True)
        rows.append(f"| {env} | {_default_text(default)} | {description} |")
    rows.append(f"| `{ENV_PREFIX}CONFIG` | unset | YAML config file with any of the settings above. |")
    rows += ["", "Each entry of `upstreams` (a deployment; config file, or JSON in the variable):", ""]
    rows += _fields_table(UpstreamDeployment, "upstreams[].")
    rows += ["", "Each model of a deployment's `models` mapping:", ""]
    rows += _fields_table(DeploymentModel, "upstreams[].models.{model}.")
    rows += ["", "Each tier of a model's `tiers` mapping:", ""]
    rows += _fields_table(TierLimits, "upstreams[].models.{model}.tiers.{tier}.")
    return "\n".join(rows) + "\n"


def _fields_table(model: type[BaseModel], prefix: str) -> list[str]:
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        default = (
            "required" if field.is_required() else _default_text(field.get_default(call_default_factory=True))
        )
        rows.append(f"| `{prefix}{name}` | {default} | {description} |")
    return rows


def splice(document: str) -> str:
    """``document`` with the text between the reference markers replaced by the table."""
    head, _, rest = document.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{reference_table()}{END}{tail}"
