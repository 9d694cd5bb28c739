"""Policy checks on rendered objects: pure functions over parsed YAML, no I/O.

Schema validation says an object is well formed; these say it is fit for production:
every workload container has requests and limits (requests not above limits), probes, runs
as non-root on a read-only root filesystem, and names a pinned image; a Redis container's
maxmemory fits its memory limit; an HPA's range is not upside down; no ConfigMap or Compose
environment carries a secret value (a URL with a user name or password is one). Across
objects (:func:`check_kubernetes_set`): a PodDisruptionBudget leaves some pod evictable, and
PDBs, Services and HPAs point at workloads that exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from knowctl.deploy.quantities import maxmemory_problem, redis_bytes
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


_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_QUANTITY_SCALE = {
    None: 1.0,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}


def quantity(value: Any) -> float | None:
    """A Kubernetes resource quantity (250m, 1.5, 512Mi, 1G) as a number, or None."""
    match = _QUANTITY.match(str(value).strip())
    if not match:
        return None
    return float(match.group(1)) * _QUANTITY_SCALE[match.group(2)]


def _requests_above_limits(resources: dict[str, Any]) -> Iterator[str]:
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    for res in ("cpu", "memory"):
        request, limit = quantity(requests.get(res)), quantity(limits.get(res))
        if request is not None and limit is not None and request > limit:
            yield f"requests.{res} ({requests[res]}) is above limits.{res} ({limits[res]})"


def _flag(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` (or ``--name=VALUE``) in a command line."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _redis_memory(container: dict[str, Any]) -> str | None:
    """Why a redis-server container's --maxmemory does not fit its memory limit, or None."""
    args = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    if not any(a.rsplit("/", 1)[-1] == "redis-server" for a in args):
        return None
    limit = quantity(((container.get("resources") or {}).get("limits") or {}).get("memory"))
    raw = _flag(args, "--maxmemory")
    if limit is None:
        return None  # the resources rule reports the missing limit
    if raw is None:
        return "redis-server has no --maxmemory: it would grow until the container is killed"
    try:
        maxmemory = redis_bytes(raw)
    except ValueError as exc:
        return str(exc)
    return maxmemory_problem(maxmemory, int(limit), (_flag(args, "--appendonly") or "no") == "yes")


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
        # The API server refuses these; a schema cannot see across the two fields.
        for message in _requests_above_limits(resources):
            yield Violation(subject, "requests-above-limits", message)
        problem = _redis_memory(container)
        if problem:
            yield Violation(subject, "redis-maxmemory", problem)


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


def check_hpa(obj: dict[str, Any]) -> Iterator[Violation]:
    spec = obj.get("spec") or {}
    low, high = spec.get("minReplicas", 1), spec.get("maxReplicas")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        yield Violation(_name(obj), "replica-range", f"minReplicas ({low}) is above maxReplicas ({high})")


def check_kubernetes(obj: dict[str, Any]) -> list[Violation]:
    kind = obj.get("kind")
    if kind in WORKLOAD_KINDS:
        return list(check_workload(obj))
    if kind == "ConfigMap":
        return list(check_configmap(obj))
    if kind == "HorizontalPodAutoscaler":
        return list(check_hpa(obj))
    return []


def _name(obj: dict[str, Any]) -> str:
    return f"{str(obj.get('kind')).lower()}/{(obj.get('metadata') or {}).get('name')}"


def _namespace(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def _selects(selector: dict[str, Any], labels: dict[str, Any]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class _Workload:
    obj: dict[str, Any]
    labels: dict[str, Any]
    fewest: int | None  # the fewest pods it runs: replicas, or its HPA's minReplicas


def check_kubernetes_set(objs: list[dict[str, Any]]) -> list[Violation]:
    """Checks across objects: what the API server accepts one by one but cannot work together.
    Only objects among ``objs`` are known: a reference to a workload is checked where the
    set holds workloads of that namespace (validating one file alone reports no gap)."""
    hpas = {
        (_namespace(o), str(((o.get("spec") or {}).get("scaleTargetRef") or {}).get("kind")),
         str(((o.get("spec") or {}).get("scaleTargetRef") or {}).get("name"))): o
        for o in objs
        if o.get("kind") == "HorizontalPodAutoscaler"
    }  # fmt: skip
    workloads: dict[str, list[_Workload]] = {}
    for obj in objs:
        if obj.get("kind") not in WORKLOAD_KINDS - {"Job", "CronJob", "Pod"}:
            continue
        key = (_namespace(obj), str(obj.get("kind")), str((obj.get("metadata") or {}).get("name")))
        hpa = hpas.get(key)
        if hpa is not None:
            fewest: int | None = (hpa.get("spec") or {}).get("minReplicas", 1)
        elif obj.get("kind") == "DaemonSet":
            fewest = None  # one per node: not known here
        else:
            fewest = (obj.get("spec") or {}).get("replicas", 1)
        template = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
        workloads.setdefault(key[0], []).append(_Workload(obj, template.get("labels") or {}, fewest))

    out: list[Violation] = []
    for (namespace, kind, name), hpa in hpas.items():
        present = workloads.get(namespace)
        if present and not any(
            w.obj.get("kind") == kind and (w.obj.get("metadata") or {}).get("name") == name for w in present
        ):
            out.append(
                Violation(_name(hpa), "dangling-target", f"scaleTargetRef {kind}/{name} is not rendered")
            )
    for obj in objs:
        obj_kind = obj.get("kind")
        if obj_kind not in ("PodDisruptionBudget", "Service"):
            continue
        present = workloads.get(_namespace(obj))
        spec = obj.get("spec") or {}
        if obj_kind == "Service":
            selector = spec.get("selector") or {}
            if selector and present and not any(_selects(selector, w.labels) for w in present):
                out.append(
                    Violation(_name(obj), "selects-nothing", f"selector {selector} matches no pod template")
                )
            continue
        sel = spec.get("selector") or {}
        if sel.get("matchExpressions") or not present:
            continue  # expressions are not evaluated here
        matched = [w for w in present if _selects(sel.get("matchLabels") or {}, w.labels)]
        if not matched:
            out.append(Violation(_name(obj), "selects-nothing", "selector matches no pod template"))
            continue
        out += _pdb_problems(obj, spec, matched)
    return out


def _pdb_problems(obj: dict[str, Any], spec: dict[str, Any], matched: list[_Workload]) -> list[Violation]:
    counts = [w.fewest for w in matched]
    fewest = None if any(c is None for c in counts) else sum(c for c in counts if c is not None)
    why = "no pod could ever be evicted: every node drain would block"
    min_available, max_unavailable = spec.get("minAvailable"), spec.get("maxUnavailable")
    if isinstance(min_available, str) and min_available.strip() == "100%":
        return [Violation(_name(obj), "pdb-blocks-drain", f"minAvailable is 100%: {why}")]
    if max_unavailable in (0, "0", "0%"):
        return [Violation(_name(obj), "pdb-blocks-drain", f"maxUnavailable is {max_unavailable}: {why}")]
    if isinstance(min_available, int) and fewest is not None and min_available >= fewest:
        names = ", ".join(_name(w.obj) for w in matched)
        return [
            Violation(
                _name(obj),
                "pdb-blocks-drain",
                f"minAvailable ({min_available}) is not below the fewest pods of {names} ({fewest}): {why}",
            )
        ]
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
