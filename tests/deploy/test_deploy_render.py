"""knowctl deploy render: what the defaults produce, values handling, template lookup."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from knowctl.deploy.render import render, to_stream
from knowctl.deploy.templates import templates_root
from knowctl.deploy.values.base import ValuesError
from knowctl.deploy.values.loading import load_values
from knowctl.settings import SECRET_FIELDS, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
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
    allowed, scrape = gw_np["spec"]["ingress"]
    assert allowed["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    # Prometheus may scrape the annotated pods without any namespace value set.
    assert scrape["from"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    ]
    egress_ports = {p["port"] for rule in gw_np["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 6379, 443}  # no metadata server without ADC
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


def gateway_env(objs: list[dict[str, Any]]) -> dict[str, str]:
    container = find(objs, "Deployment", "knowctl")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def mounted_secret_keys(objs: list[dict[str, Any]]) -> set[str]:
    """The keys the gateway reads from the Secret: its KNOWCTL_<NAME>_FILE under the mount."""
    return {
        value.rsplit("/", 1)[1]
        for name, value in gateway_env(objs).items()
        if name.endswith("_FILE") and value.startswith("/run/secrets/knowctl/")
    }


def test_secret_is_a_placeholder_and_secret_files_are_wired() -> None:
    objs = k8s_objects()
    secret = find(objs, "Secret", "knowctl-secrets")
    assert not secret.get("data") and not secret.get("stringData")
    env = gateway_env(objs)
    for field in ("admin_token", "google_api_key"):
        assert env[f"KNOWCTL_{field.upper()}_FILE"] == f"/run/secrets/knowctl/{field}"
    text = "".join(f.content for f in render("k8s", load_values()))
    assert "sealed-secrets" in text.lower() or "kubeseal" in text
    assert "External Secrets" in text
    assert not find_secret_off(["secret.create=false"])


@pytest.mark.parametrize(
    ("sets", "keys"),
    [
        ([], {"admin_token", "google_api_key"}),  # no CDN configured: no cdn_api_token
        (["settings.google_credentials=adc"], {"admin_token"}),  # Workload Identity: no key
        (["settings.google_credentials=/run/secrets/knowctl/sa.json"], {"admin_token"}),
        (
            ["settings.cdn_purge_url=https://api.cloudflare.com/client/v4", "settings.cdn_zone_id=z"],
            {"admin_token", "google_api_key", "cdn_api_token"},
        ),
        (['secret.fields=["admin_token","cdn_api_token"]'], {"admin_token", "cdn_api_token"}),
    ],
)
def test_only_the_secrets_the_values_use_are_mounted(sets: list[str], keys: set[str]) -> None:
    """A KNOWCTL_<NAME>_FILE that cannot be read stops the daemon (exit 2): none is mounted
    that the operator has no reason to put into the Secret, on either target."""
    objs = k8s_objects(sets)
    assert mounted_secret_keys(objs) == keys
    comment = find_in_files("k8s", sets, "30-secret.yaml")
    assert set(re.findall(r"--from-file=(\w+)=", comment)) == keys
    compose = yaml.safe_load(compose_files(sets)["docker-compose.yml"])
    env = compose["services"]["gateway"]["environment"]
    assert {
        k.removeprefix("KNOWCTL_").removesuffix("_FILE").lower() for k in env if k.endswith("_FILE")
    } == keys
    assert set(compose["secrets"]) - {"grafana_admin_password", "sa.json"} == keys


def test_no_secret_at_all_renders_no_secret_volume() -> None:
    objs = k8s_objects(["secret.fields=[]"])
    assert not [o for o in objs if o["kind"] == "Secret"]
    pod = find(objs, "Deployment", "knowctl")["spec"]["template"]["spec"]
    assert "secrets" not in {v["name"] for v in pod["volumes"]}
    compose = yaml.safe_load(compose_files(["secret.fields=[]"])["docker-compose.yml"])
    assert "secrets" not in compose["services"]["gateway"]


def find_in_files(target: str, sets: list[str], path: str) -> str:
    (content,) = [f.content for f in render(target, load_values(sets=sets)) if f.path == path]  # type: ignore[arg-type]
    return content


def _console_blocks(markdown: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"```console\n(.*?)```", markdown, re.S)]


def _kubectl_secret_commands(markdown: str) -> list[tuple[str, str, set[str]]]:
    """(namespace, secret name, keys) of every `kubectl create secret generic` documented."""
    out = []
    for block in _console_blocks(markdown):
        command = block.replace("\\\n", " ")
        for line in command.splitlines():
            match = re.search(r"kubectl -n (\S+) create secret generic (\S+)(.*)", line)
            if match:
                keys = set(re.findall(r"--from-file=(\w+)=", match.group(3)))
                out.append((match.group(1), match.group(2), keys))
    return out


def test_documented_kubectl_commands_make_exactly_the_rendered_keys(tmp_path: Path) -> None:
    """docs/deploy-kubernetes.md: the command for the defaults and the one for its
    Workload Identity values file make the keys those renders mount, no more, no less."""
    doc = (REPO / "docs" / "deploy-kubernetes.md").read_text()
    commands = _kubectl_secret_commands(doc)
    assert len(commands) == 2, commands
    example = re.search(r"A values file, e\.g\.:\n\n```yaml\n(.*?)```", doc, re.S)
    assert example, "the Workload Identity values example is gone"
    values_file = tmp_path / "values.yaml"
    values_file.write_text(example.group(1))
    for (namespace, name, keys), values in zip(
        commands, [load_values(), load_values(values_file)], strict=True
    ):
        objs = [d for f in render("k8s", values) for d in yaml.safe_load_all(f.content) if d]
        dep = find(objs, "Deployment", values.name)
        assert namespace == values.namespace == dep["metadata"]["namespace"]
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        assert name == volumes["secrets"]["secret"]["secretName"]
        assert keys == mounted_secret_keys(objs), (namespace, keys)
    assert "google_api_key" not in commands[1][2]


def test_documented_compose_secret_files_are_the_rendered_ones() -> None:
    doc = (REPO / "docs" / "deploy-compose.md").read_text()
    section = doc.split("## 2. Secrets", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in _console_blocks(section) if "secrets/" in b]
    documented = set(re.findall(r"> secrets/(\w+)", block))
    compose = yaml.safe_load(compose_files()["docker-compose.yml"])
    assert documented == {item["file"].removeprefix("./secrets/") for item in compose["secrets"].values()}


def test_compose_service_account_file_becomes_a_secret() -> None:
    sets = ["settings.google_credentials=/run/secrets/sa.json"]
    compose = yaml.safe_load(compose_files(sets)["docker-compose.yml"])
    assert compose["secrets"]["sa.json"] == {"file": "./secrets/sa.json"}
    assert "sa.json" in compose["services"]["gateway"]["secrets"]
    assert "KNOWCTL_GOOGLE_API_KEY_FILE" not in compose["services"]["gateway"]["environment"]


POOL = [
    "settings.upstreams=[{name: studio, models: {gemini-2.5-pro: {rpm: 150}}},"
    " {name: spare, order: 1}, {name: eu, family: vertex, project: p, location: europe-west4, credentials: adc}]"
]


def test_a_pool_reads_each_key_from_the_secret_on_both_targets(tmp_path: Path) -> None:
    objs = k8s_objects(POOL)
    config = yaml.safe_load(find(objs, "ConfigMap", "knowctl-config")["data"]["knowctl.yaml"])
    files = {d["name"]: d.get("api_key_file") for d in config["upstreams"]}
    assert files == {
        "studio": "/run/secrets/knowctl/upstream-studio-api-key",
        "spare": "/run/secrets/knowctl/upstream-spare-api-key",
        "eu": None,  # ADC: no key
    }
    assert mounted_secret_keys(objs) == {"admin_token"}  # no KNOWCTL_GOOGLE_API_KEY_FILE with a pool
    pod = find(objs, "Deployment", "knowctl")["spec"]["template"]["spec"]
    assert "secrets" in {v["name"] for v in pod["volumes"]}  # the keys are files of the mounted Secret
    comment = find_in_files("k8s", POOL, "30-secret.yaml")
    assert set(re.findall(r"--from-file=([\w-]+)=", comment)) == {
        "admin_token", "upstream-studio-api-key", "upstream-spare-api-key"
    }  # fmt: skip
    path = tmp_path / "knowctl.yaml"
    path.write_text(yaml.safe_dump(config))
    assert [d.name for d in load_settings(path).upstreams] == ["studio", "spare", "eu"]  # the daemon reads it

    compose = yaml.safe_load(compose_files(POOL)["docker-compose.yml"])
    assert {"upstream-studio-api-key", "upstream-spare-api-key"} <= set(compose["secrets"])
    assert "upstream-studio-api-key" in compose["services"]["gateway"]["secrets"]
    assert "KNOWCTL_GOOGLE_API_KEY_FILE" not in compose["services"]["gateway"]["environment"]
    compose_config = yaml.safe_load(compose_files(POOL)["knowctl/knowctl.yaml"])
    assert compose_config["upstreams"][0]["api_key_file"] == "/run/secrets/upstream-studio-api-key"


def test_a_pool_key_in_the_values_is_refused() -> None:
    with pytest.raises(ValuesError, match=r"upstreams\.0\.api_key is a secret.*upstream-studio-api-key"):
        load_values(sets=["settings.upstreams=[{name: studio, api_key: AIza-not-here}]"])


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
    assert set(doc["secrets"]) == {"admin_token", "google_api_key", "grafana_admin_password"}
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

    from knowctl.deploy.values import compose, kubernetes, schema, workloads

    # The schema's root and its sections; IsolatedSettings (values.derived) is Settings' own.
    undocumented = [
        f"{cls.__name__}.{name}"
        for module in (schema, workloads, kubernetes, compose)
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls.__module__ == module.__name__
        for name, info in cls.model_fields.items()
        if not info.description
    ]
    assert undocumented == []


# --- the network policy the chosen credentials and DNS need ---------------------------------


def gateway_policy(sets: list[str]) -> dict[str, Any]:
    return find(k8s_objects(sets), "NetworkPolicy", "knowctl")["spec"]


def egress_to(spec: dict[str, Any]) -> set[tuple[str, int]]:
    return {
        (peer["ipBlock"]["cidr"], port["port"])
        for rule in spec["egress"]
        for peer in rule["to"]
        if "ipBlock" in peer
        for port in rule["ports"]
    }


def test_workload_identity_reaches_the_metadata_server() -> None:
    metadata = {("169.254.169.254/32", 80), ("169.254.169.252/32", 988), ("127.0.0.1/32", 988)}
    assert metadata <= egress_to(gateway_policy(["settings.google_credentials=adc"]))
    assert not metadata & egress_to(gateway_policy([]))  # an API key needs none of it
    assert not metadata & egress_to(
        gateway_policy(["settings.google_credentials=/run/secrets/knowctl/sa.json"])
    )
    forced = egress_to(gateway_policy(["network_policy.metadata_server=true"]))
    assert metadata <= forced
    off = ["settings.google_credentials=adc", "network_policy.metadata_server=false"]
    assert not metadata & egress_to(gateway_policy(off))


def test_dns_egress_reaches_node_local_dns_too() -> None:
    spec = gateway_policy([])
    (dns,) = [r for r in spec["egress"] if {p["port"] for p in r["ports"]} == {53}]
    peers = dns["to"]
    assert {"ipBlock": {"cidr": "169.254.20.10/32"}} in peers
    assert any(p.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"} for p in peers)
    custom = gateway_policy(['network_policy.dns_cidrs=["10.96.0.10"]'])
    assert ("10.96.0.10/32", 53) in egress_to(custom)


@pytest.mark.parametrize(
    ("sets", "peer"),
    [
        (
            [],
            {
                "namespaceSelector": {},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            },
        ),
        (
            ["network_policy.metrics_namespace=monitoring"],
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            },
        ),
        (
            ["network_policy.metrics_namespace=monitoring", "network_policy.metrics_pod_labels={}"],
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        ),
    ],
)
def test_prometheus_may_scrape_by_default(sets: list[str], peer: dict[str, Any]) -> None:
    ingress = gateway_policy(sets)["ingress"]
    assert len(ingress) == 2 and ingress[1]["from"] == [peer]
    assert ingress[1]["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_scrape_rule_can_be_dropped_but_never_opened_to_every_pod() -> None:
    assert len(gateway_policy(["network_policy.metrics_scrape=false"])["ingress"]) == 1
    with pytest.raises(ValuesError, match="every pod"):
        load_values(sets=["network_policy.metrics_pod_labels={}"])


# --- trusted proxies: each visitor has its own limits behind the shipped proxies --------------


def test_compose_trusts_exactly_its_nginx() -> None:
    files = compose_files()
    compose = yaml.safe_load(files["docker-compose.yml"])
    nginx_ip = compose["services"]["nginx"]["networks"]["default"]["ipv4_address"]
    (ipam,) = compose["networks"]["default"]["ipam"]["config"]
    subnet, ip_range = ipaddress.ip_network(ipam["subnet"]), ipaddress.ip_network(ipam["ip_range"])
    address = ipaddress.ip_address(nginx_ip)
    # In the subnet, outside the range Docker hands out: no replica can take it first.
    assert address in subnet and address not in ip_range and str(address) != ipam["gateway"]
    config = yaml.safe_load(files["knowctl/knowctl.yaml"])
    assert config["trusted_proxies"] == f"{nginx_ip}/32"
    conf = files["nginx/nginx.conf"]
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
    other = compose_files(["compose.subnet=192.168.240.0/24"])
    assert yaml.safe_load(other["knowctl/knowctl.yaml"])["trusted_proxies"] == "192.168.240.2/32"


def test_kubernetes_trusts_the_ingress_controllers_pods() -> None:
    def trusted(sets: list[str]) -> str:
        cm = find(k8s_objects(sets), "ConfigMap", "knowctl-config")
        return str(yaml.safe_load(cm["data"]["knowctl.yaml"])["trusted_proxies"])

    assert trusted([]) == "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"
    assert trusted(['ingress.trusted_proxies=["10.8.0.0/14"]']) == "10.8.0.0/14"
    assert trusted(["ingress.enabled=false"]) == ""
    assert trusted(["settings.trusted_proxies=10.1.0.0/16"]) == "10.1.0.0/16"  # given wins


def test_cors_exposes_the_headers_the_gateway_sends() -> None:
    from knowctl.deploy.render import CORS_EXPOSE_HEADERS

    conf = compose_files()["nginx/nginx.conf"]
    (exposed,) = re.findall(r'Access-Control-Expose-Headers "([^"]*)"', conf)
    assert [h.strip() for h in exposed.split(",")] == list(CORS_EXPOSE_HEADERS)
    notes = find(k8s_objects(), "Ingress", "knowctl")["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/cors-expose-headers"] == exposed
    assert {"RateLimit", "RateLimit-Policy", "X-Knowctl-Cache"} <= set(CORS_EXPOSE_HEADERS)


# --- keep-alive: the proxy always closes an idle connection first ------------------------------


@pytest.mark.parametrize(
    ("sets", "daemon", "proxy"), [([], 620, 60), (["settings.keep_alive_timeout=30"], 30, 27)]
)
def test_keep_alive_is_rendered_consistently(sets: list[str], daemon: int, proxy: int) -> None:
    files = compose_files(sets)
    assert yaml.safe_load(files["knowctl/knowctl.yaml"])["keep_alive_timeout"] == daemon
    upstream = files["nginx/nginx.conf"].split("upstream knowctl_gateway {", 1)[1].split("}", 1)[0]
    assert re.findall(r"keepalive_timeout (\d+)s;", upstream) == [str(proxy)]
    assert proxy < daemon
    cm = find(k8s_objects(sets), "ConfigMap", "knowctl-config")
    assert yaml.safe_load(cm["data"]["knowctl.yaml"])["keep_alive_timeout"] == daemon


def test_keep_alive_default_outlasts_common_proxies() -> None:
    # nginx upstream and AWS ALB keep idle connections 60 s, Google's load balancers 600 s.
    assert Settings.model_fields["keep_alive_timeout"].default > 600


# --- values that render well-formed manifests which cannot work ------------------------------


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (
            ["gateway.autoscaling.min_replicas=5", "gateway.autoscaling.max_replicas=2"],
            ["gateway.autoscaling", "min_replicas (5) is above max_replicas (2)"],
        ),
        (['gateway.resources.memory_request="2Gi"'], ["gateway.resources", "memory_request (2Gi) is above"]),
        (['gateway.resources.cpu_request="3"'], ["gateway.resources", "cpu_request (3) is above"]),
        (["redis.maxmemory=2gb"], ["redis", "not below the container's memory limit"]),
        (["redis.maxmemory=768mb"], ["redis", "above 50%", "AOF rewrite forks"]),
        (["redis.maxmemory=900mb", "redis.appendonly=false"], ["redis", "above 80%"]),
        (["redis.maxmemory=lots"], ["redis.maxmemory", "not a Redis memory size"]),
        (['redis.maxmemory="0"'], ["redis", "no limit"]),
        (["redis.storage=768Mi"], ["redis", "below twice maxmemory"]),
        (
            ["compose.monitoring.alert_for={KnowctlNope: 1m}"],
            ["compose.monitoring.alert_for", "no such alert"],
        ),
        (
            ["compose.monitoring.alert_for={KnowctlDown: soon}"],
            ["compose.monitoring.alert_for", "KnowctlDown"],
        ),
        (["compose.subnet=10.57.19.5/24"], ["compose.subnet"]),
        (["compose.subnet=10.57.19.0/30"], ["compose.subnet", "/16 to /28"]),
        (
            ['network_policy.metadata_egress=["169.254.169.254"]'],
            ["network_policy.metadata_egress", "CIDR:PORT"],
        ),
        (['ingress.trusted_proxies=["the-lb"]'], ["ingress.trusted_proxies", "not an IP address"]),
    ],
)
def test_cross_field_values_are_refused_naming_the_keys(sets: list[str], words: list[str]) -> None:
    with pytest.raises(ValuesError) as err:
        load_values(sets=sets)
    for word in words:
        assert word in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("target", "sets", "words"),
    [
        ("k8s", ["gateway.min_available=3"], ["gateway.min_available (3)", "min_replicas (3)", "node drain"]),
        (
            "k8s",
            ["gateway.autoscaling.enabled=false", "gateway.replicas=2"],
            ["gateway.min_available (2)", "gateway.replicas (2)"],
        ),
        ("k8s", ["settings.port=9000"], ["settings.port (9000)", "gateway.port (8080)"]),
        ("compose", ["settings.host=127.0.0.1"], ["settings.host", "loopback"]),
        ("k8s", ["settings.max_body_bytes=52428800"], ["ingress.max_body_size (10m)", "max_body_bytes"]),
        ("compose", ["compose.nginx.max_body_size=1m"], ["compose.nginx.max_body_size (1m)"]),
        ("k8s", ["settings.drain_timeout=600"], ["grace period", "drain_timeout"]),
    ],
)
def test_values_that_cannot_work_on_the_target_are_refused(
    target: str, sets: list[str], words: list[str]
) -> None:
    values = load_values(sets=sets)
    with pytest.raises(ValuesError) as err:
        render(target, values)  # type: ignore[arg-type]
    for word in words:
        assert word in str(err.value), str(err.value)


def test_a_pdb_rule_does_not_apply_to_compose() -> None:
    # Compose has no PodDisruptionBudget: one replica there is fine.
    render("compose", load_values(sets=["gateway.replicas=1"]))
    render(
        "k8s",
        load_values(
            sets=["gateway.autoscaling.enabled=false", "gateway.replicas=1", "gateway.min_available=0"]
        ),
    )


def test_cli_refuses_a_pdb_that_blocks_drains_with_exit_2() -> None:
    result = deploy("render", "--target", "k8s", "--set", "gateway.min_available=3")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "gateway.min_available" in result.stderr and not result.stdout.strip()
