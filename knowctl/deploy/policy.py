"""Policy checks on rendered objects: pure functions over parsed YAML, no I/O.

Schema validation says an object is well formed; these say it is fit for production:
every workload container has requests and limits, probes, runs as non-root on a
read-only root filesystem, and names a pinned image; no ConfigMap or Compose environment
carries a secret value (a URL with a user name or password is one).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from knowctl.redact import carries_credentials, redact_text
from knowctl.settings import SECRET_FIELDS, Settings

WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"})
# Run-to-completion pods are not probed: they are not serving anything.
_UNPROBED_KINDS = frozenset({"Job", "CronJob"})
_SECRETISH = re.compile(r"(password|passwd|secret|token|api[_-]?key|private[_-]?key|credential)", re.I)
# Values that are secrets whatever their key: Google API keys, PEM private keys.
_SECRET_VALUE = re.compile(r"(^AIza[0-9A-Za-z_\-]{30,}$|-----BEGIN [A-Z ]*PRIVATE KEY-----)")
_NON_SECRET_SETTINGS = frozenset(Settings.model_fields) - SECRET_FIELDS


@dataclass(frozen=True)
class Violation:
    subject: str  # e.g. "deployment/knowctl container gateway"
    rule: str  # short rule id, e.g. "resources"
    message: str


def image_tag_problem(image: str) -> str | None:
    """Why ``image`` is not pinned, or None. A digest pins; so does any tag but 'latest'."""
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]  # a registry port ("host:5000/x") is not a tag
    if ":" not in last:
        return f"image {image!r} has no tag (means 'latest')"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} uses the 'latest' tag"
    return None


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    kind = obj.get("kind")
    spec: dict[str, Any] = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return ((spec.get("template") or {}).get("spec")) or {}


def _effective(pod_sc: dict[str, Any], sc: dict[str, Any], key: str) -> Any:
    return sc.get(key, pod_sc.get(key))


def check_workload(obj: dict[str, Any]) -> Iterator[Violation]:
    kind = str(obj.get("kind"))
    name = f"{kind.lower()}/{(obj.get('metadata') or {}).get('name')}"
    pod = _pod_spec(obj)
    pod_sc = pod.get("securityContext") or {}
    containers = [(c, False) for c in pod.get("containers") or []]
    containers += [(c, True) for c in pod.get("initContainers") or []]
    if not containers:
        yield Violation(name, "containers", "workload has no containers")
    for container, is_init in containers:
        subject = f"{name} container {container.get('name')}"
        resources = container.get("resources") or {}
        for section in ("requests", "limits"):
            for res in ("cpu", "memory"):
                if res not in (resources.get(section) or {}):
                    yield Violation(subject, "resources", f"no {section}.{res}")
        if not is_init and kind not in _UNPROBED_KINDS:
            for probe in ("livenessProbe", "readinessProbe"):
                if not container.get(probe):
                    yield Violation(subject, "probes", f"no {probe}")
        sc = container.get("securityContext") or {}
        if _effective(pod_sc, sc, "runAsNonRoot") is not True:
            yield Violation(subject, "non-root", "runAsNonRoot is not true")
        if _effective(pod_sc, sc, "runAsUser") == 0:
            yield Violation(subject, "non-root", "runAsUser is 0 (root)")
        if sc.get("readOnlyRootFilesystem") is not True:
            yield Violation(subject, "read-only-root", "readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            yield Violation(subject, "privilege-escalation", "allowPrivilegeEscalation is not false")
        problem = image_tag_problem(str(container.get("image", "")))
        if problem:
            yield Violation(subject, "image-tag", problem)


def _secret_entries(key: str, value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, reason) for every entry of a (possibly nested) mapping that holds a secret."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _secret_entries(str(k), v, f"{path}.{k}")
        return
    if value in (None, "", [], {}):
        return
    bare = key.rsplit(".", 1)[0].lower().replace("-", "_")
    if bare.removeprefix("knowctl_") in SECRET_FIELDS:
        yield path, "is a secret setting"
    elif _SECRETISH.search(bare) and bare not in _NON_SECRET_SETTINGS and not bare.endswith("_file"):
        yield path, "looks like a secret"
    elif isinstance(value, str) and _SECRET_VALUE.search(value):
        yield path, "holds a secret-looking value"
    elif isinstance(value, str) and _holds_credentials_url(value):
        yield path, "holds a URL with credentials (put it in a Secret: KNOWCTL_<NAME>_FILE)"


def _holds_credentials_url(value: str) -> bool:
    if "://" not in value:
        return False
    if redact_text(value) != value:  # user:password@ anywhere, a bare URL or inside a file
        return True
    bare = value.strip()
    return not any(c.isspace() for c in bare) and carries_credentials(bare)  # ?password=...


def check_configmap(obj: dict[str, Any]) -> Iterator[Violation]:
    import yaml

    name = f"configmap/{(obj.get('metadata') or {}).get('name')}"
    for key, value in (obj.get("data") or {}).items():
        yield from (
            Violation(name, "secret-in-configmap", f"{p} {why}")
            for p, why in _secret_entries(key, value, key)
        )
        if str(key).endswith((".yaml", ".yml")) and isinstance(value, str):
            try:
                embedded = yaml.safe_load(value)
            except yaml.YAMLError:
                continue
            if isinstance(embedded, dict):
                for p, why in _secret_entries(key, embedded, key):
                    yield Violation(name, "secret-in-configmap", f"{p} {why}")


def check_kubernetes(obj: dict[str, Any]) -> list[Violation]:
    kind = obj.get("kind")
    if kind in WORKLOAD_KINDS:
        return list(check_workload(obj))
    if kind == "ConfigMap":
        return list(check_configmap(obj))
    return []


def check_compose(doc: dict[str, Any], gateway_service: str = "gateway") -> list[Violation]:
    """Every service: healthcheck, limits, pinned image, no secret in its environment."""
    out: list[Violation] = []
    for name, svc in (doc.get("services") or {}).items():
        subject = f"service {name}"
        health = svc.get("healthcheck") or {}
        if not health.get("test") or health.get("disable"):
            out.append(Violation(subject, "healthcheck", "no healthcheck"))
        limits = ((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        for res in ("cpus", "memory"):
            if res not in limits:
                out.append(Violation(subject, "resources", f"no deploy.resources.limits.{res}"))
        if "image" in svc:
            problem = image_tag_problem(str(svc["image"]))
            if problem:
                out.append(Violation(subject, "image-tag", problem))
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
        for path, why in _secret_entries("environment", env, "environment"):
            out.append(Violation(subject, "secret-in-environment", f"{path} {why}"))
        if name == gateway_service:
            user = str(svc.get("user", "")).split(":", 1)[0]
            if user in ("", "0", "root"):
                out.append(Violation(subject, "non-root", "gateway runs as root (set user)"))
            if svc.get("read_only") is not True:
                out.append(Violation(subject, "read-only-root", "gateway root filesystem is writable"))
    return out
