"""``knowctl deploy validate``: strict schemas plus policy, over a rendered file or folder.

Kubernetes objects are checked by ``kubernetes-validate`` in strict mode (unknown fields
are errors) for each requested Kubernetes version; a kind it has no schema for is an
error too, since ``render`` writes only built-in kinds. Compose files are checked against
the Compose Specification schema that ``check-jsonschema`` vendors. The gateway config
file (``knowctl.yaml``, standalone or inside a ConfigMap) is checked by Settings itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowctl.deploy.policy import Violation, check_compose, check_kubernetes, check_kubernetes_set

DEFAULT_K8S_VERSIONS = ("1.30",)  # plus the newest version the validator knows, added at run time
_YAML_SUFFIXES = (".yaml", ".yml")


class ValidatorMissing(RuntimeError):
    """A validator package is not installed (install knowctl[deploy])."""


@dataclass
class Report:
    checked: list[str] = field(default_factory=list)  # "file: kind/name" per object checked
    problems: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.checked)


def newest_k8s_version() -> str:
    try:
        from kubernetes_validate.utils import (  # type: ignore[import-untyped, unused-ignore]
            latest_version,
        )
    except ImportError as exc:
        raise ValidatorMissing("kubernetes-validate is not installed") from exc
    return ".".join(str(latest_version()).split(".")[:2])


def _k8s_schema(obj: dict[str, Any], versions: list[str], subject: str) -> list[Violation]:
    try:
        from kubernetes_validate import utils  # type: ignore[import-untyped, unused-ignore]
    except ImportError as exc:
        raise ValidatorMissing("kubernetes-validate is not installed") from exc
    out = []
    for version in versions:
        try:
            utils.validate(obj, version, strict=True)
        except utils.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path) or "(root)"
            out.append(Violation(subject, f"schema-{version}", f"{where}: {exc.message}"))
        except utils.SchemaNotFoundError:
            out.append(Violation(subject, f"schema-{version}", "not a built-in kind of this version"))
        except utils.VersionNotSupportedError:
            out.append(
                Violation(subject, "schema", f"kubernetes-validate does not know Kubernetes {version}")
            )
    return out


def _compose_schema(doc: dict[str, Any], subject: str) -> list[Violation]:
    import json
    from importlib.resources import files

    import jsonschema  # type: ignore[import-untyped, unused-ignore]

    try:
        schema_text = (files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    except (ImportError, FileNotFoundError) as exc:
        raise ValidatorMissing(
            "check-jsonschema (which vendors the Compose schema) is not installed"
        ) from exc
    schema = json.loads(schema_text)
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    return [
        Violation(
            subject, "compose-schema", f"{'.'.join(str(p) for p in err.path) or '(root)'}: {err.message}"
        )
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


def _settings_problems(data: Any, subject: str) -> list[Violation]:
    from pydantic import ValidationError

    from knowctl.deploy.values.derived import IsolatedSettings

    if not isinstance(data, dict):
        return [Violation(subject, "settings", "config file must be a mapping of settings")]
    try:
        IsolatedSettings(**data)
    except ValidationError as exc:
        return [
            Violation(subject, "settings", f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}")
            for e in exc.errors()
        ]
    return []


def _configmap_settings(obj: dict[str, Any], subject: str) -> list[Violation]:
    import yaml

    from knowctl.deploy.render import CONFIG_FILE

    text = (obj.get("data") or {}).get(CONFIG_FILE)
    return _settings_problems(yaml.safe_load(text), subject) if isinstance(text, str) else []


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in _YAML_SUFFIXES and p.is_file())
    return [path]


def validate_path(path: Path, k8s_versions: list[str] | None = None) -> Report:
    """Check every YAML document under ``path``; files that are neither kind are skipped."""
    import yaml

    versions = list(k8s_versions or [*DEFAULT_K8S_VERSIONS, newest_k8s_version()])
    versions = list(dict.fromkeys(versions))
    report = Report()
    if not path.exists():
        report.problems.append(Violation(str(path), "input", "no such file or folder"))
        return report
    objects: list[tuple[str, dict[str, Any]]] = []  # (file, object): for the checks across objects
    for file in _files(path):
        rel = file.name if file == path else file.relative_to(path).as_posix()
        try:
            docs = [d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d is not None]
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            report.problems.append(Violation(rel, "yaml", f"not valid YAML: {exc}"))
            continue
        for doc in docs:
            if not isinstance(doc, dict):
                continue
            if "apiVersion" in doc and "kind" in doc:
                subject = f"{rel}: {str(doc['kind']).lower()}/{(doc.get('metadata') or {}).get('name')}"
                report.checked.append(subject)
                objects.append((rel, doc))
                report.problems += _k8s_schema(doc, versions, subject)
                report.problems += [
                    Violation(f"{rel}: {v.subject}", v.rule, v.message) for v in check_kubernetes(doc)
                ]
                if doc["kind"] == "ConfigMap":
                    report.problems += _configmap_settings(doc, subject)
            elif "services" in doc:
                subject = f"{rel}: compose"
                report.checked.append(subject)
                report.problems += _compose_schema(doc, subject)
                report.problems += [
                    Violation(f"{rel}: {v.subject}", v.rule, v.message) for v in check_compose(doc)
                ]
            elif file.name == "knowctl.yaml":
                report.checked.append(f"{rel}: settings")
                report.problems += _settings_problems(doc, f"{rel}: settings")
    where = {f"{str(d['kind']).lower()}/{(d.get('metadata') or {}).get('name')}": rel for rel, d in objects}
    report.problems += [
        Violation(f"{where.get(v.subject, '?')}: {v.subject}", v.rule, v.message)
        for v in check_kubernetes_set([d for _, d in objects])
    ]
    return report
