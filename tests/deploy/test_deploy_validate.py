"""knowctl deploy validate: strict schemas (Kubernetes 1.30 and newest, Compose) and policy."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from knowctl.deploy.policy import check_compose, check_kubernetes, image_tag_problem
from knowctl.deploy.render import render, write
from knowctl.deploy.validate import newest_k8s_version, validate_path
from knowctl.deploy.values.loading import load_values
from tests.deploy.test_deploy_render import deploy
from tests.support.docker_engine import unavailable


@pytest.fixture(autouse=True)
def _validators_installed() -> None:
    import importlib.util

    for module, package in (
        ("kubernetes_validate", "kubernetes-validate"),
        ("check_jsonschema", "check-jsonschema"),
    ):
        if importlib.util.find_spec(module) is None:
            unavailable(f"{package} is not installed")


def rendered(tmp_path: Path, target: str, sets: list[str] | None = None) -> Path:
    out = tmp_path / target
    write(render("k8s" if target == "k8s" else "compose", load_values(sets=sets)), out)
    return out


def edit_yaml(path: Path, change: Callable[[list[dict[str, Any]]], None]) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    change(docs)
    path.write_text(yaml.safe_dump_all(docs))


def deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment")


def gateway(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return deployment(docs)["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "sets",
    [
        None,
        [
            "gateway.autoscaling.enabled=false",
            "redis.storage_class=fast",
            "network_policy.metrics_namespace=monitoring",
            "gateway.service_account_annotations={iam.gke.io/gcp-service-account: a@b.iam}",
        ],
        [  # a pool: its keys in the Secret, the config naming their files
            "settings.upstreams=[{name: studio, models: {gemini-2.5-pro: {rpm: 150}}},"
            " {name: eu, family: vertex, project: p, location: europe-west4, credentials: adc}]",
        ],
    ],
)
def test_rendered_kubernetes_passes_for_1_30_and_newest(tmp_path: Path, sets: list[str] | None) -> None:
    newest = newest_k8s_version()
    report = validate_path(rendered(tmp_path, "k8s", sets), ["1.30", newest])
    assert report.ok, report.problems
    assert len(report.checked) >= 14


def test_rendered_compose_passes(tmp_path: Path) -> None:
    report = validate_path(rendered(tmp_path, "compose", ["compose.nginx.tls=true"]))
    assert report.ok, report.problems
    assert any(c.endswith("compose") for c in report.checked)
    assert any(c.endswith("settings") for c in report.checked)


def _unknown_field(docs: list[dict[str, Any]]) -> None:
    gateway(docs)["resourcez"] = {}


def _no_resources(docs: list[dict[str, Any]]) -> None:
    del gateway(docs)["resources"]["limits"]


def _latest(docs: list[dict[str, Any]]) -> None:
    gateway(docs)["image"] = "ghcr.io/knowctl/knowctl:latest"


def _root(docs: list[dict[str, Any]]) -> None:
    gateway(docs)["securityContext"]["runAsNonRoot"] = False


def _writable_root(docs: list[dict[str, Any]]) -> None:
    del gateway(docs)["securityContext"]["readOnlyRootFilesystem"]


def _no_probe(docs: list[dict[str, Any]]) -> None:
    del gateway(docs)["readinessProbe"]


def _bad_type(docs: list[dict[str, Any]]) -> None:
    deployment(docs)["spec"]["revisionHistoryLimit"] = "five"


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        (_unknown_field, "schema-1.30"),
        (_bad_type, "schema-1.30"),
        (_no_resources, "resources"),
        (_latest, "image-tag"),
        (_root, "non-root"),
        (_writable_root, "read-only-root"),
        (_no_probe, "probes"),
    ],
)
def test_broken_deployment_is_rejected(
    tmp_path: Path, mutate: Callable[[list[dict[str, Any]]], None], rule: str
) -> None:
    out = rendered(tmp_path, "k8s")
    edit_yaml(out / "40-deployment.yaml", mutate)
    report = validate_path(out, ["1.30"])
    assert not report.ok
    assert rule in {p.rule for p in report.problems}, report.problems


@pytest.mark.parametrize(
    ("key", "value"),
    [("admin_token", "s3cret"), ("DB_PASSWORD", "hunter2"), ("note", "AIza" + "x" * 35)],
)
def test_secret_in_a_configmap_is_rejected(tmp_path: Path, key: str, value: str) -> None:
    out = rendered(tmp_path, "k8s")
    edit_yaml(out / "20-configmap.yaml", lambda docs: docs[0]["data"].__setitem__(key, value))
    report = validate_path(out, ["1.30"])
    assert "secret-in-configmap" in {p.rule for p in report.problems}
    assert not any(value in p.message for p in report.problems), "the report must not echo the secret"


def test_secret_inside_the_embedded_config_file_is_rejected(tmp_path: Path) -> None:
    out = rendered(tmp_path, "k8s")

    def add_key(docs: list[dict[str, Any]]) -> None:
        config = yaml.safe_load(docs[0]["data"]["knowctl.yaml"])
        config["google_api_key"] = "k"
        docs[0]["data"]["knowctl.yaml"] = yaml.safe_dump(config)

    edit_yaml(out / "20-configmap.yaml", add_key)
    rules = {p.rule for p in validate_path(out, ["1.30"]).problems}
    assert "secret-in-configmap" in rules


def test_bad_setting_in_the_configmap_is_rejected(tmp_path: Path) -> None:
    out = rendered(tmp_path, "k8s")

    def bad_port(docs: list[dict[str, Any]]) -> None:
        config = yaml.safe_load(docs[0]["data"]["knowctl.yaml"])
        config["port"] = 99999
        docs[0]["data"]["knowctl.yaml"] = yaml.safe_dump(config)

    edit_yaml(out / "20-configmap.yaml", bad_port)
    problems = validate_path(out, ["1.30"]).problems
    assert any(p.rule == "settings" and "port" in p.message for p in problems)


def test_custom_resource_is_not_a_builtin_kind(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text(
        yaml.safe_dump(
            {"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret", "metadata": {"name": "s"}}
        )
    )
    report = validate_path(tmp_path, ["1.30"])
    assert [p.message for p in report.problems] == ["not a built-in kind of this version"]


def test_broken_compose_is_rejected(tmp_path: Path) -> None:
    out = rendered(tmp_path, "compose")
    doc = yaml.safe_load((out / "docker-compose.yml").read_text())
    doc["services"]["gateway"]["replicaz"] = 3
    del doc["services"]["redis"]["healthcheck"]
    doc["services"]["nginx"]["image"] = "nginx"
    doc["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] = "admin"
    (out / "docker-compose.yml").write_text(yaml.safe_dump(doc))
    rules = {p.rule for p in validate_path(out).problems}
    assert {"compose-schema", "healthcheck", "image-tag", "secret-in-environment"} <= rules


def test_policy_unit_cases() -> None:
    assert image_tag_problem("redis:7.4.2-alpine") is None
    assert image_tag_problem("registry:5000/team/app@sha256:" + "a" * 64) is None
    assert image_tag_problem("registry:5000/team/app") is not None
    assert image_tag_problem("app:latest") is not None
    job = {
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "image": "a:1",
                            "resources": {
                                "requests": {"cpu": "1", "memory": "1Mi"},
                                "limits": {"cpu": "1", "memory": "1Mi"},
                            },
                            "securityContext": {
                                "runAsNonRoot": True,
                                "readOnlyRootFilesystem": True,
                                "allowPrivilegeEscalation": False,
                            },
                        }
                    ]
                }
            }
        },
    }
    assert check_kubernetes(job) == []  # jobs are not probed
    svc = {
        "services": {
            "gateway": {
                "image": "a:1",
                "healthcheck": {"test": ["CMD", "true"]},
                "deploy": {"resources": {"limits": {"cpus": "1", "memory": "1g"}}},
            }
        }
    }
    assert {v.rule for v in check_compose(svc)} == {"non-root", "read-only-root"}


def test_cli_validate_exit_codes_and_json(tmp_path: Path) -> None:
    out = rendered(tmp_path, "k8s")
    ok = deploy("validate", str(out), "--k8s-version", "1.30")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 problem(s)" in ok.stdout
    edit_yaml(out / "40-deployment.yaml", _latest)
    bad = deploy("validate", str(out), "--json", "--k8s-version", "1.30")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False and report["problems"][0]["rule"] == "image-tag"
    assert deploy("validate", str(tmp_path / "missing")).returncode == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert deploy("validate", str(empty)).returncode == 1


# --- checks across fields and objects: what the API server refuses or what cannot work -------


def _by_kind(docs: list[dict[str, Any]], kind: str, name: str = "knowctl") -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _memory_request_above_limit(out: Path) -> None:
    edit_yaml(
        out / "40-deployment.yaml", lambda docs: gateway(docs)["resources"]["requests"].update(memory="1Gi")
    )


def _cpu_request_above_limit(out: Path) -> None:
    edit_yaml(
        out / "40-deployment.yaml", lambda docs: gateway(docs)["resources"]["requests"].update(cpu="1500m")
    )


def _hpa_upside_down(out: Path) -> None:
    edit_yaml(out / "60-hpa.yaml", lambda docs: docs[0]["spec"].update(minReplicas=5, maxReplicas=2))


def _pdb_blocks_drains(out: Path) -> None:
    edit_yaml(out / "70-pdb.yaml", lambda docs: docs[0]["spec"].update(minAvailable=3))


def _pdb_max_unavailable_zero(out: Path) -> None:
    def change(docs: list[dict[str, Any]]) -> None:
        spec = docs[0]["spec"]
        del spec["minAvailable"]
        spec["maxUnavailable"] = 0

    edit_yaml(out / "70-pdb.yaml", change)


def _redis_maxmemory(value: str) -> Callable[[Path], None]:
    def mutate(out: Path) -> None:
        def change(docs: list[dict[str, Any]]) -> None:
            (container,) = _by_kind(docs, "Deployment", "knowctl-redis")["spec"]["template"]["spec"][
                "containers"
            ]
            args = container["args"]
            args[args.index("--maxmemory") + 1] = value

        edit_yaml(out / "80-redis.yaml", change)

    return mutate


def _service_selects_nothing(out: Path) -> None:
    edit_yaml(
        out / "50-service.yaml",
        lambda docs: docs[0]["spec"]["selector"].update({"app.kubernetes.io/component": "gatewya"}),
    )


def _hpa_target_gone(out: Path) -> None:
    edit_yaml(out / "60-hpa.yaml", lambda docs: docs[0]["spec"]["scaleTargetRef"].update(name="knowctl-old"))


@pytest.mark.parametrize(
    ("mutate", "rule", "words"),
    [
        (
            _memory_request_above_limit,
            "requests-above-limits",
            "requests.memory (1Gi) is above limits.memory",
        ),
        (_cpu_request_above_limit, "requests-above-limits", "requests.cpu (1500m) is above limits.cpu (1)"),
        (_hpa_upside_down, "replica-range", "minReplicas (5) is above maxReplicas (2)"),
        (_pdb_blocks_drains, "pdb-blocks-drain", "minAvailable (3) is not below the fewest pods"),
        (_pdb_max_unavailable_zero, "pdb-blocks-drain", "maxUnavailable is 0"),
        # The old default: 768mb under a 1Gi limit with appendonly leaves no room for the fork.
        (_redis_maxmemory("768mb"), "redis-maxmemory", "above 50%"),
        (_redis_maxmemory("1gb"), "redis-maxmemory", "not below the container's memory limit"),
        (_service_selects_nothing, "selects-nothing", "matches no pod template"),
        (_hpa_target_gone, "dangling-target", "Deployment/knowctl-old is not rendered"),
    ],
)
def test_manifests_that_cannot_work_are_rejected(
    tmp_path: Path, mutate: Callable[[Path], None], rule: str, words: str
) -> None:
    out = rendered(tmp_path, "k8s")
    mutate(out)
    report = validate_path(out, ["1.30"])
    matching = [p for p in report.problems if p.rule == rule]
    assert matching, report.problems
    assert any(words in p.message for p in matching), matching
    assert all(p.subject.split(": ", 1)[0].endswith(".yaml") for p in matching), matching


def test_pdb_against_a_fixed_replica_count(tmp_path: Path) -> None:
    out = rendered(tmp_path, "k8s", ["gateway.autoscaling.enabled=false", "gateway.replicas=3"])
    assert validate_path(out, ["1.30"]).ok
    edit_yaml(out / "40-deployment.yaml", lambda docs: deployment(docs)["spec"].update(replicas=2))
    problems = [p for p in validate_path(out, ["1.30"]).problems if p.rule == "pdb-blocks-drain"]
    assert problems and "(2)" in problems[0].message


def test_one_file_alone_reports_no_missing_workload(tmp_path: Path) -> None:
    out = rendered(tmp_path, "k8s")
    assert validate_path(out / "60-hpa.yaml", ["1.30"]).ok
    assert validate_path(out / "70-pdb.yaml", ["1.30"]).ok
