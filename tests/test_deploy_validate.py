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
from knowctl.deploy.values import load_values
from tests.support.docker_engine import unavailable
from tests.test_deploy_render import deploy


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
