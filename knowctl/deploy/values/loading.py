"""Loading deployment values: defaults, then a YAML file, then ``--set`` items, validated as one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from knowctl.deploy.values.base import ValuesError, dotted_key
from knowctl.deploy.values.derived import gateway_settings
from knowctl.deploy.values.schema import Values
from knowctl.settings import Settings


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValuesError(f"--set {dotted}: {part} is not a mapping")
        node = child
    node[leaf] = value


def _schema_type(dotted: str) -> Any:
    """The type the schema gives the value at ``dotted`` (``settings.*`` by Settings), or None."""
    import types
    from typing import Union, get_args, get_origin

    annotation: Any = Values
    for part in dotted.split("."):
        if get_origin(annotation) in (Union, types.UnionType):  # X | None: the X
            annotation = next((a for a in get_args(annotation) if a is not type(None)), None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return None
            annotation = Settings if (annotation is Values and part == "settings") else field.annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return None
    return annotation


def _is_text(annotation: Any) -> bool:
    import types
    from typing import Union, get_args, get_origin

    if annotation is str:
        return True
    if get_origin(annotation) is Literal:
        return all(isinstance(arg, str) for arg in get_args(annotation))
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [arg for arg in get_args(annotation) if arg is not type(None)]
        return bool(kinds) and all(_is_text(arg) for arg in kinds)
    return False


def parse_set(items: list[str]) -> dict[str, Any]:
    """``a.b=c`` strings into a nested mapping; values are YAML scalars (5 is an int), except
    where the schema wants a string: there the text is kept as given (``image.tag=1.10``)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            raise ValuesError(f"--set {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ValuesError(f"--set {key}: value is not valid YAML: {exc}") from exc
        if isinstance(value, int | float) and _is_text(_schema_type(key)):  # bool is an int
            value = raw
        _set_path(out, key, value)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_values(values_file: Path | None = None, sets: list[str] | None = None) -> Values:
    """Defaults, then the YAML file, then ``--set`` items; validated as one."""
    import yaml

    data: dict[str, Any] = {}
    if values_file is not None:
        try:
            loaded = yaml.safe_load(values_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValuesError(f"cannot read values file {values_file}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ValuesError(f"values file {values_file} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ValuesError(f"values file {values_file} must hold a mapping")
        data = loaded or {}
    data = _merge(data, parse_set(sets or []))
    try:
        values = Values.model_validate(data)
    except ValidationError as exc:
        raise ValuesError(
            "; ".join(f"{dotted_key(err['loc'])}: {err['msg']}" for err in exc.errors())
        ) from exc
    # The gateway's own settings are validated by Settings itself (types and validators).
    gateway_settings(values)
    return values
