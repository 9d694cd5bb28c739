"""knowctl deploy render: what the defaults produce, values handling, template lookup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from knowctl.deploy.render import render, to_stream
from knowctl.deploy.templates import templates_root
from knowctl.deploy.values import ValuesError, load_values
from knowctl.settings import SECRET_FIELDS, Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY_CLI = "from knowctl.commands.deploy import app; app(prog_name='knowctl deploy')"


def deploy(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The real ``knowctl deploy`` sub-app in a fresh process (independent of cli.py wiring)."""
    return subprocess.run(
        [sys.executable, "-c", DEPLOY_CLI, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
    )


def k8s_objects(sets: list[str] | None = None) -> list[dict[str, Any]]:
    files = render("k8s", load_values(sets=sets))
    return [d for f in files for d in yaml.safe_load_all(f.content) if d]


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def test_templates_found_next_to_the_package_in_a_checkout() -> None:
    assert templates_root() == REPO / "templates"


def test_kubernetes_defaults() -> None:
    objs = k8s_objects()
    kinds = sorted({o["kind"] for o in objs})
    assert kinds == sorted(
        {
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "PersistentVolumeClaim",
            "Ingress",
            "NetworkPolicy",
        }
    )
    dep = find(objs, "Deployment", "knowctl")
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = dep["spec"]["template"]["spec"]
    (gw,) = pod["containers"]
    assert gw["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}
    assert set(gw["resources"]["limits"]) == {"cpu", "memory"}
    assert gw["livenessProbe"]["httpGet"]["path"] == "/api/health"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/api/ready"
    assert gw["startupProbe"]["httpGet"]["path"] == "/api/health"
    sc = gw["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 1000 and sc["readOnlyRootFilesystem"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsUser"] == 1000
    assert not any("upload" in v["name"] for v in pod["volumes"])
    pre_stop = int(gw["lifecycle"]["preStop"]["exec"]["command"][-1])
    upstream_timeout = Settings.model_fields["upstream_timeout"].default
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + 30 + upstream_timeout
    assert not gw["image"].endswith(":latest")

    hpa = find(objs, "HorizontalPodAutoscaler", "knowctl")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["spec"]["metrics"]
    }
    assert targets == {"cpu": 70, "memory": 80}
    # The HPA owns the replica count; a fixed one in the Deployment would fight it on apply.
    assert "replicas" not in dep["spec"]
    assert find(objs, "PodDisruptionBudget", "knowctl")["spec"]["minAvailable"] == 2
    assert find(objs, "Service", "knowctl")["spec"]["type"] == "ClusterIP"

    redis = find(objs, "Deployment", "knowctl-redis")
    assert redis["spec"]["strategy"]["type"] == "Recreate"
    (rc,) = redis["spec"]["template"]["spec"]["containers"]
    assert rc["livenessProbe"] and rc["readinessProbe"] and rc["resources"]["limits"]
    pvc = find(objs, "PersistentVolumeClaim", "knowctl-redis")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"

    ing = find(objs, "Ingress", "knowctl")
    assert ing["spec"]["tls"][0]["hosts"] == [ing["spec"]["rules"][0]["host"]]
    notes = ing["metadata"]["annotations"]
    assert "nginx.ingress.kubernetes.io/limit-rps" in notes
    assert notes["nginx.ingress.kubernetes.io/enable-cors"] == "true"

    deny = find(objs, "NetworkPolicy", "knowctl-default-deny")
    assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    gw_np = find(objs, "NetworkPolicy", "knowctl")
    (allowed,) = gw_np["spec"]["ingress"]
    assert allowed["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    egress_ports = {p["port"] for rule in gw_np["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 6379, 443}
    redis_np = find(objs, "NetworkPolicy", "knowctl-redis")
    assert (
        redis_np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        == "gateway"
    )


def test_configmap_holds_every_non_secret_setting_and_loads_as_settings(tmp_path: Path) -> None:
    cm = find(k8s_objects(), "ConfigMap", "knowctl-config")
    config = yaml.safe_load(cm["data"]["knowctl.yaml"])
    assert set(config) == set(Settings.model_fields) - SECRET_FIELDS
    assert config["store_url"] == "redis://knowctl-redis:6379/0"
    assert config["host"] == "0.0.0.0"
    path = tmp_path / "knowctl.yaml"
    path.write_text(cm["data"]["knowctl.yaml"])
    settings = load_settings(path)
    assert settings.store_url == "redis://knowctl-redis:6379/0"
    assert settings.port == 8080


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        ([], 10),  # the autoscaler's ceiling
        (["gateway.autoscaling.max_replicas=7"], 7),
        (["gateway.autoscaling.max_replicas=4", "settings.workers=2"], 8),
        (["gateway.autoscaling.enabled=false", "gateway.replicas=5"], 5),
    ],
)
def test_max_replicas_follows_the_most_daemons_that_can_run(sets: list[str], expected: int) -> None:
    """Each daemon's share of a limit during a store outage is limit / max_replicas."""
    cm = find(k8s_objects(sets), "ConfigMap", "knowctl-config")
    assert yaml.safe_load(cm["data"]["knowctl.yaml"])["max_replicas"] == expected


def test_secret_is_a_placeholder_and_secret_files_are_wired() -> None:
    objs = k8s_objects()
    secret = find(objs, "Secret", "knowctl-secrets")
    assert not secret.get("data") and not secret.get("stringData")
    env = {
        e["name"]: e["value"]
        for e in find(objs, "Deployment", "knowctl")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    for field in SECRET_FIELDS:
        assert env[f"KNOWCTL_{field.upper()}_FILE"].endswith(f"/{field}")
    text = "".join(f.content for f in render("k8s", load_values()))
    assert "sealed-secrets" in text.lower() or "kubeseal" in text
    assert "External Secrets" in text
    assert not find_secret_off(["secret.create=false"])


def find_secret_off(sets: list[str]) -> list[dict[str, Any]]:
    return [o for o in k8s_objects(sets) if o["kind"] == "Secret"]


def test_custom_values_file_and_sets(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "namespace": "gemini",
                "image": {"repository": "registry.example/knowctl", "tag": "1.2.3"},
                "gateway": {"autoscaling": {"enabled": False}, "resources": {"cpu_limit": "2"}},
                "redis": {"enabled": False},
                "settings": {"log_level": "debug", "store_url": "redis://shared-redis:6379/1"},
            }
        )
    )
    objs = [
        d
        for f in render("k8s", load_values(values, ["gateway.replicas=5", "ingress.enabled=false"]))
        for d in yaml.safe_load_all(f.content)
        if d
    ]
    dep = find(objs, "Deployment", "knowctl")
    assert dep["metadata"]["namespace"] == "gemini"
    assert dep["spec"]["replicas"] == 5
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/knowctl:1.2.3"
    assert container["resources"]["limits"]["cpu"] == "2"
    kinds = {o["kind"] for o in objs}
    assert (
        "HorizontalPodAutoscaler" not in kinds
        and "Ingress" not in kinds
        and "PersistentVolumeClaim" not in kinds
    )
    config = yaml.safe_load(find(objs, "ConfigMap", "knowctl-config")["data"]["knowctl.yaml"])
    assert config["log_level"] == "debug" and config["store_url"] == "redis://shared-redis:6379/1"


@pytest.mark.parametrize(
    ("sets", "key"),
    [
        (["gateway.resources.cpu_request=lots"], "gateway.resources.cpu_request"),
        (["image.tag=latest"], "image.tag"),
        (["gateway.replicas=0"], "gateway.replicas"),
        (["gateway.replicsa=3"], "gateway.replicsa"),
        (["settings.google_api_key=AIzaSecret"], "settings"),
        (["settings.store_url=mysql://x"], "settings.store_url"),
        (["settings.not_a_setting=1"], "not_a_setting"),
        (["compose.monitoring.scrape_interval=often"], "compose.monitoring.scrape_interval"),
    ],
)
def test_bad_values_name_the_key(sets: list[str], key: str) -> None:
    with pytest.raises(ValuesError) as err:
        load_values(sets=sets)
    assert key in str(err.value)
    assert "AIzaSecret" not in str(err.value)


def test_cli_bad_value_exits_2_naming_the_key() -> None:
    result = deploy("render", "--target", "k8s", "--set", "redis.storage=huge")
    assert result.returncode == 2, result.stderr
    assert "redis.storage" in result.stderr
    assert deploy("render", "--target", "helm").returncode == 2


def test_cli_stdout_is_one_multi_document_yaml_stream() -> None:
    result = deploy("render", "--target", "k8s")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(docs) == len(k8s_objects())
    compose = deploy("render", "--target", "compose")
    assert compose.returncode == 0, compose.stderr
    assert any("services" in d for d in yaml.safe_load_all(compose.stdout) if isinstance(d, dict))


def test_cli_out_k8s_writes_only_builtin_objects(tmp_path: Path) -> None:
    result = deploy("render", "--target", "k8s", "--out", str(tmp_path / "k8s"))
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "k8s").rglob("*"))
    assert files and all(f.suffix == ".yaml" for f in files)
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            assert doc is None or ("apiVersion" in doc and "kind" in doc), f


def compose_files(sets: list[str] | None = None) -> dict[str, str]:
    return {f.path: f.content for f in render("compose", load_values(sets=sets))}


def test_compose_defaults() -> None:
    files = compose_files()
    assert {
        "docker-compose.yml",
        "nginx/nginx.conf",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "knowctl/knowctl.yaml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/knowctl.yml",
    } <= set(files)
    doc = yaml.safe_load(files["docker-compose.yml"])
    services = doc["services"]
    assert set(services) == {"gateway", "redis", "nginx", "prometheus", "grafana"}
    assert services["gateway"]["deploy"]["replicas"] == 3
    for name, svc in services.items():
        assert svc["healthcheck"]["test"], name
        assert svc["deploy"]["resources"]["limits"], name
    assert set(doc["secrets"]) == SECRET_FIELDS | {"grafana_admin_password"}
    assert services["gateway"]["user"].startswith("1000") and services["gateway"]["read_only"] is True
    assert "least_conn;" in files["nginx/nginx.conf"]
    config = yaml.safe_load(files["knowctl/knowctl.yaml"])
    assert set(config) == set(Settings.model_fields) - SECRET_FIELDS
    assert config["store_url"] == "redis://redis:6379/0"


def test_compose_alerts_and_dashboards() -> None:
    files = compose_files()
    rules = yaml.safe_load(files["prometheus/alerts.yml"])["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"KnowctlHighErrorRate", "KnowctlQuotaNearLimit", "KnowctlLowCacheHitRate", "KnowctlDown"} <= names
    by_name = {r["alert"]: r["expr"] for r in rules}
    assert "> 0.01" in by_name["KnowctlHighErrorRate"] and "> 0.8" in by_name["KnowctlQuotaNearLimit"]
    assert "< 0.8" in by_name["KnowctlLowCacheHitRate"]
    titles = {
        json.loads(c)["title"].split(" / ", 1)[1]
        for p, c in files.items()
        if p.startswith("grafana/dashboards/")
    }
    assert titles == {
        "Application Overview",
        "API Quota Usage",
        "Cache Performance",
        "Error Rates & Latency",
        "Resource Utilization",
    }
    datasource = yaml.safe_load(files["grafana/provisioning/datasources/prometheus.yml"])["datasources"][0]
    for path, content in files.items():
        if path.startswith("grafana/dashboards/"):
            for panel in json.loads(content)["panels"]:
                assert panel["datasource"]["uid"] == datasource["uid"], (path, panel["title"])


def test_compose_custom_nginx_upstreams() -> None:
    conf = compose_files(
        [
            'compose.nginx.upstream_servers=["127.0.0.1:18080", "127.0.0.1:18081"]',
            "compose.nginx.dynamic_dns=false",
        ]
    )["nginx/nginx.conf"]
    assert "server 127.0.0.1:18080 max_fails=3 fail_timeout=10s;" in conf
    assert "resolver" not in conf


def test_stream_leaves_out_non_yaml_files() -> None:
    stream, skipped = to_stream(render("compose", load_values()))
    assert skipped == ["nginx/nginx.conf"]
    assert len([d for d in yaml.safe_load_all(stream) if d]) == len(compose_files()) - 1


def _repo_template_files() -> set[str]:
    root = REPO / "templates"
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.mark.timeout(600)
def test_templates_ship_in_a_built_wheel_and_render_from_it(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=540,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("knowctl-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    vpy = venv / "bin" / "python"
    # The fresh venv gets the wheel's dependencies from this test's environment: a .pth line
    # appends our site-packages *after* its own, so knowctl itself comes from the wheel.
    purelib = Path(sysconfig.get_paths()["purelib"])
    vpurelib = Path(
        subprocess.check_output(
            [str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (vpurelib / "zz_deps.pth").write_text(f"{purelib}\n")
    install = subprocess.run(
        [str(vpy), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = (
        "import json, knowctl; from knowctl.deploy.templates import templates_root; "
        "r = templates_root(); print(json.dumps([knowctl.__file__, str(r), "
        "sorted(p.relative_to(r).as_posix() for p in r.rglob('*') if p.is_file())]))"
    )
    out = subprocess.run([str(vpy), "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    module, root, shipped = json.loads(out.stdout)
    assert module.startswith(str(venv)), module
    assert root.startswith(str(venv)) and root.endswith("share/knowctl/templates"), root
    # Every template file in the repository is in the wheel: a new folder needs a data-files entry.
    assert set(shipped) == _repo_template_files()
    rendered = subprocess.run(
        [str(vpy), "-c", DEPLOY_CLI, "render", "--target", "compose", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert (tmp_path / "out" / "docker-compose.yml").is_file()
    assert len(list((tmp_path / "out" / "grafana" / "dashboards").glob("*.json"))) == 5
    k8s = subprocess.run(
        [str(vpy), "-c", DEPLOY_CLI, "render", "--target", "k8s"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert k8s.returncode == 0, k8s.stderr
    assert len([d for d in yaml.safe_load_all(k8s.stdout) if d]) == len(k8s_objects())


def test_every_value_is_documented() -> None:
    from pydantic import BaseModel

    from knowctl.deploy import values as module

    undocumented = [
        f"{cls.__name__}.{name}"
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls.__module__ == module.__name__
        for name, info in cls.model_fields.items()
        if not info.description and cls is not module.IsolatedSettings
    ]
    assert undocumented == []
