"""One Settings object: flags over env over secret files over the YAML file over defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from knowctl.settings import ConfigError, load_settings
from knowctl.settings_doc import END, START, reference_table, splice

ROOT = Path(__file__).resolve().parents[2]


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.port == 8080 and settings.store_url == "memory://"
    assert settings.upstream_url is None and settings.max_body_bytes == 10 * 1024 * 1024


def test_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "knowctl.yaml"
    config.write_text("port: 9001\nhost: 0.0.0.0\nupstream_url: http://file:1\n")
    monkeypatch.setenv("KNOWCTL_PORT", "9002")
    settings = load_settings(config)
    assert settings.host == "0.0.0.0"  # from the file
    assert settings.port == 9002  # env beats the file
    assert load_settings(config, port=9003).port == 9003  # flags beat env
    assert load_settings(config, port=None).port == 9002  # a flag not given changes nothing
    monkeypatch.setenv("KNOWCTL_CONFIG", str(config))
    assert load_settings().upstream_url == "http://file:1"


def test_secret_from_file_never_in_repr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret-token\n")
    monkeypatch.setenv("KNOWCTL_ADMIN_TOKEN_FILE", str(secret))
    settings = load_settings()
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "s3cret-token"
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("content", "needle"),
    [("port: [1", "not valid YAML"), ("- 1\n- 2\n", "mapping"), ("prot: 1\n", "unknown setting(s) prot")],
)
def test_bad_config_files_named(tmp_path: Path, content: str, needle: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=None) as caught:
        load_settings(config)
    assert needle in str(caught.value) and str(config) in str(caught.value)


def test_missing_secret_file_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KNOWCTL_GOOGLE_API_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="KNOWCTL_GOOGLE_API_KEY_FILE"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"KNOWCTL_PORT": "eighty"}, "port"),
        ({"KNOWCTL_STORE_URL": "mongodb://x"}, "store_url"),
        ({"KNOWCTL_UPSTREAM_URL": "ftp://x"}, "upstream_url"),
        ({"KNOWCTL_MAX_BODY_BYTES": "-1"}, "max_body_bytes"),
    ],
)
def test_cli_reports_bad_values_with_exit_2(env: dict[str, str], needle: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "knowctl", "serve"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_workers_with_memory_store_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "knowctl", "serve", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "shared store" in result.stderr


@pytest.mark.parametrize("document", ["README.md", "docs/configuration.md"])
def test_reference_is_current(document: str) -> None:
    text = (ROOT / document).read_text()
    assert START in text and END in text
    assert splice(text) == text, f"run: knowctl config reference --write {document}"
    for name in ("KNOWCTL_STORE_URL", "KNOWCTL_GOOGLE_API_KEY_FILE", "KNOWCTL_CONFIG"):
        assert name in reference_table()


def _shown(value: object) -> str:
    """How the reference shows a default value."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list) and not value:
        return "empty"
    return f"`{value}`"


def test_reference_defaults_are_what_the_daemon_runs_with(tmp_path: Path) -> None:
    """Every default in the table is the value a daemon started without any setting holds
    (``knowctl config show`` in an empty environment), factory defaults included."""
    shown = subprocess.run(
        [sys.executable, "-m", "knowctl", "config", "show", "--json"],
        env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    actual = json.loads(shown.stdout)
    cells: dict[str, str] = {}
    settings_rows = reference_table().split("\n\n", 1)[0]  # the deployments' fields follow it
    for row in settings_rows.splitlines()[2:]:
        env, default, _ = (cell.strip() for cell in row.strip("|").split("|", 2))
        cells[env.split("`")[1].removeprefix("KNOWCTL_").lower()] = default
    assert "PydanticUndefined" not in reference_table()
    assert cells["tiers"] == cells["quota_models"] == "empty"
    for name, value in actual.items():
        if value == "***":  # a secret the environment does not set is None; never shown
            continue
        assert cells[name] == _shown(value), name


def test_config_show_hides_secrets(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "knowctl", "config", "show", "--json"],
        env={"PATH": "/usr/bin:/bin", "KNOWCTL_ADMIN_TOKEN": "hunter2"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and '"admin_token": "***"' in result.stdout
    pool = tmp_path / "pool.yaml"
    pool.write_text(yaml.safe_dump({"upstreams": [{"name": "a", "api_key": "AIza-pool-secret"}]}))
    for form in (["--json"], []):
        shown = subprocess.run(
            [sys.executable, "-m", "knowctl", "config", "show", "--config", str(pool), *form],
            env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"}, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert "AIza-pool-secret" not in shown.stdout and "upstreams" in shown.stdout


def test_bad_pools_fail_at_start_naming_the_field(tmp_path: Path) -> None:
    cases = {
        "upstreams.0.name": [{"name": "Bad Name"}],
        "upstreams.0": [{"name": "v", "family": "vertex"}],  # no project
        "upstreams.1": [{"name": "x"}, {"name": "y", "api_key": "k", "api_key_file": str(tmp_path)}],
        "upstreams.0.models": [{"name": "x", "models": {"no/slash": {}}}],
        "upstreams.0.models.m.rpm": [{"name": "x", "models": {"m": {"rpm": 0}}}],
    }
    for field, upstreams in cases.items():
        config = tmp_path / "bad.yaml"
        config.write_text(yaml.safe_dump({"upstreams": upstreams}))
        with pytest.raises(Exception, match=field.replace(".", r"\.")):
            load_settings(config)
    config.write_text(yaml.safe_dump({"upstreams": [{"name": "x", "service_tiers": {"LOW": "dedicated"}}]}))
    with pytest.raises(Exception, match="dedicated is not a gemini tier"):
        load_settings(config)
    config.write_text(yaml.safe_dump({"upstreams": [{"name": "x", "service_tiers": {"SOMETIMES": "flex"}}]}))
    with pytest.raises(Exception, match=r"upstreams\.0\.service_tiers"):
        load_settings(config)
    for proxy, problem in (("https://p:3128", "http:// proxy"), ("http://u:pw@p:3128", "credentials")):
        config.write_text(yaml.safe_dump({"upstreams": [{"name": "x", "proxy": proxy}]}))
        with pytest.raises(Exception, match=problem):
            load_settings(config)
    config.write_text(yaml.safe_dump({"upstreams": [{"name": "a"}, {"name": "a"}]}))
    with pytest.raises(Exception, match="unique: a"):
        load_settings(config)
    config.write_text(yaml.safe_dump({"upstreams": [{"name": "a"}], "quota_rpm": 5}))
    with pytest.raises(Exception, match="quota_rpm"):
        load_settings(config)
