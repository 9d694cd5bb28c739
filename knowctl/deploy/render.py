"""Render the Kubernetes or Compose templates with validated values.

Files ending in ``.j2`` are Jinja templates (the suffix is dropped), files starting with
``_`` are partials imported by them; every other file is
copied unchanged, which is how the Grafana dashboards stay plain JSON: their legends use
``{{label}}``, which Jinja would otherwise try to expand.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from knowctl.deploy.templates import templates_root
from knowctl.deploy.values import Values
from knowctl.deploy.values.base import ValuesError
from knowctl.deploy.values.checks import target_problems
from knowctl.deploy.values.derived import (
    compose_network,
    config_document,
    gateway_settings,
    grace_period,
    pool_key_files,
    redis_host,
    secret_files,
    url_secrets,
)
from knowctl.settings import Settings

Target = Literal["k8s", "compose"]
CONFIG_FILE = "knowctl.yaml"
# Where the container finds its config file and secrets; the Dockerfile documents the same.
CONFIG_DIR = "/etc/knowctl"
SECRETS_DIR = "/run/secrets"
# What a browser script may read of the gateway's answers, beyond the CORS-safelisted
# headers: every header the gateway sends for its callers (CDN-only fields are left out).
# X-Request-Id comes with a failed provider call's answer: the operator's log keeps the
# provider's original answer under it. tests/deploy/test_compose_stack.py checks the list
# against what running gateways send.
CORS_EXPOSE_HEADERS = (
    "Age",
    "ETag",
    "RateLimit",
    "RateLimit-Policy",
    "Retry-After",
    "X-Goog-Upload-Chunk-Granularity",
    "X-Goog-Upload-Control-URL",
    "X-Goog-Upload-Size-Received",
    "X-Goog-Upload-Status",
    "X-Goog-Upload-URL",
    "X-Knowctl-Cache",
    "X-Request-Id",
)
# What a browser may send: the SDKs' headers, an upload's, and the caches' PATCH and DELETE.
CORS_ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "x-goog-api-key",
    "x-goog-user-project",
    "x-goog-upload-command",
    "x-goog-upload-header-content-length",
    "x-goog-upload-header-content-type",
    "x-goog-upload-offset",
    "x-goog-upload-protocol",
)
CORS_ALLOW_METHODS = ("GET", "POST", "PATCH", "DELETE", "OPTIONS")
# nginx's own default for idle upstream connections; never at or above the daemon's.
NGINX_UPSTREAM_KEEPALIVE_S = 60


@dataclass(frozen=True)
class RenderedFile:
    path: str  # relative, POSIX separators
    content: str
    secret: bool = False  # holds a password from the values: written readable by its owner only


def _cpu(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _compose_memory(quantity: str) -> str:
    # Kubernetes' binary units are Docker's k/m/g (both 1024-based).
    number, unit = quantity[:-2], quantity[-2:]
    return number + {"Ki": "k", "Mi": "m", "Gi": "g", "Ti": "t"}[unit]


def _quote(value: Any) -> str:
    # JSON strings are valid YAML double-quoted scalars: safe for any value in any template.
    return json.dumps(value)


def upstream_keepalive(settings: Settings) -> int:
    """Seconds nginx keeps an idle connection to a daemon: below the daemon's own keep-alive,
    so nginx always closes first and never sends a request on a connection being closed."""
    daemon = settings.keep_alive_timeout
    return max(1, min(NGINX_UPSTREAM_KEEPALIVE_S, daemon - max(1, daemon // 10)))


def _metadata_egress(values: Values, settings: Settings) -> list[dict[str, Any]]:
    wanted = values.network_policy.metadata_server
    if wanted is None:
        wanted = settings.google_credentials == "adc"
    if not wanted:
        return []
    out = []
    for item in values.network_policy.metadata_egress:
        cidr, port = item.rsplit(":", 1)
        out.append({"cidr": cidr, "port": int(port)})
    return out


def _credential_secrets(settings: Settings, files: list[str]) -> list[str]:
    """The Compose secret that holds settings.google_credentials, when it names a file where
    Compose mounts secrets (/run/secrets/NAME): the render makes NAME a secret."""
    path = PurePosixPath(settings.google_credentials or "adc")
    if str(path.parent) != SECRETS_DIR or path.name in files:
        return []
    return [path.name]


def _context(target: Target, values: Values) -> dict[str, Any]:
    import yaml

    settings = gateway_settings(values, target)
    files = secret_files(values, settings)
    pool_keys = pool_key_files(settings)
    key_dir = f"{SECRETS_DIR}/knowctl" if target == "k8s" else SECRETS_DIR
    config_yaml = yaml.safe_dump(config_document(settings, files, key_dir), sort_keys=False)
    secrets = url_secrets(settings)
    credentials = _credential_secrets(settings, files) if target == "compose" else []
    return {
        "v": values,
        "settings": settings,
        "config_yaml": config_yaml,
        # A changed ConfigMap must roll the pods: the checksum goes into the pod template.
        "config_checksum": hashlib.sha256(config_yaml.encode()).hexdigest(),
        "config_dir": CONFIG_DIR,
        "config_file": CONFIG_FILE,
        "secrets_dir": SECRETS_DIR,
        # The secret settings mounted as files: only those the values use (a file that
        # cannot be read stops the daemon), the same list in the manifests and the docs' command.
        "secret_files": files,
        # A pool's API keys, in the same Secret: files the config names (api_key_file).
        "pool_key_files": pool_keys,
        # URLs of the values that carry a password: a Secret of their own (Kubernetes) or
        # secret files (Compose), read through KNOWCTL_<NAME>_FILE; no checksum of them goes
        # on the pod template, where it would be a hash to guess the password against.
        "url_secrets": secrets,
        # A service-account file named under /run/secrets/ (Compose): a secret of its own.
        "credential_secrets": credentials,
        "compose_secrets": [*files, *pool_keys, *secrets, *credentials],
        "url_secret_name": f"{values.name}-urls",
        "grace_period": grace_period(values, settings),
        "redis_host": redis_host(values, target),
        "network": compose_network(values),
        "cors_expose_headers": ", ".join(CORS_EXPOSE_HEADERS),
        "cors_allow_headers": ", ".join(CORS_ALLOW_HEADERS),
        "cors_allow_methods": ", ".join(CORS_ALLOW_METHODS),
        "upstream_keepalive": upstream_keepalive(settings),
        "metadata_egress": _metadata_egress(values, settings),
    }


def render(target: Target, values: Values, root: Path | None = None) -> list[RenderedFile]:
    """Every output file of ``target``, in a stable order."""
    import jinja2

    problems = target_problems(values, target)
    if problems:
        raise ValuesError("; ".join(problems))
    base = templates_root(root) / target
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(base)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - YAML, nginx and Prometheus files, never HTML
    )
    env.filters["q"] = _quote
    env.filters["cpu"] = _cpu
    env.filters["compose_memory"] = _compose_memory
    env.filters["indent_block"] = lambda text, n: "\n".join(
        (" " * n + line) if line else line for line in str(text).splitlines()
    )
    context = _context(target, values)
    secrets: dict[str, str] = context["url_secrets"]
    files: list[RenderedFile] = []
    for source in sorted(p for p in base.rglob("*") if p.is_file()):
        rel = source.relative_to(base).as_posix()
        if source.name.startswith("_"):  # partials (macros) are imported, not rendered
            continue
        if rel.endswith(".j2"):
            text = env.get_template(rel).render(context)
            rel = rel[: -len(".j2")]
        else:
            text = source.read_text(encoding="utf-8")
        if text.strip():  # a template switched off by values renders empty: no file
            text = text if text.endswith("\n") else text + "\n"
            # As given, or as the q filter escaped it.
            holds_secret = any(v in text or _quote(v)[1:-1] in text for v in secrets.values())
            files.append(RenderedFile(rel, text, secret=holds_secret))
    if target == "compose":  # Compose reads a secret from a file: the render writes it
        files += [
            RenderedFile(f"secrets/{name}", value + "\n", secret=True) for name, value in secrets.items()
        ]
    return files


def write(files: list[RenderedFile], out: Path) -> list[Path]:
    written = []
    for item in files:
        dest = out / item.path
        if not item.secret:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(item.content, encoding="utf-8")
        else:
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            dest.unlink(missing_ok=True)  # a file left by an earlier render may be more open
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(item.content)
        written.append(dest)
    return written


def _is_yaml(path: str) -> bool:
    return path.endswith((".yaml", ".yml", ".json"))


def to_stream(files: list[RenderedFile]) -> tuple[str, list[str]]:
    """One multi-document YAML stream (JSON is YAML), and the files it cannot hold."""
    docs, skipped = [], []
    for item in files:
        if not _is_yaml(item.path):
            skipped.append(item.path)
            continue
        body = item.content.strip("\n")
        if body.startswith("---"):
            body = body[3:].lstrip("\n")
        docs.append(f"# Source: {item.path}\n{body}\n")
    return "---\n".join(docs), skipped
