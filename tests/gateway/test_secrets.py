"""Secrets stay secret: passwords inside URLs are shown as ***, read from files, rendered into
Secrets only, and the worker processes of ``--workers N`` get no secret in their environment."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import ValidationError

from knowctl.deploy.policy import check_compose, check_kubernetes
from knowctl.deploy.render import render, write
from knowctl.deploy.validate import validate_path
from knowctl.deploy.values.base import ValuesError
from knowctl.deploy.values.loading import load_values
from knowctl.logs import JsonFormatter, TextFormatter
from knowctl.redact import carries_credentials, redact_text, redact_url
from knowctl.settings import load_settings
from tests.support.fixtures import Simulator, start_gateway
from tests.support.net import LOOPBACK, free_port
from tests.support.redis_server import server_binary

PASSWORD = "s3cret"
STORE = f"redis://:{PASSWORD}@127.0.0.1:1/0"
UPSTREAM = f"https://gw-user:{PASSWORD}@upstream.example/base"
CDN = f"https://cdn-user:{PASSWORD}@api.cdn.example/client/v4"
GEN = "/v1beta/models/gemini-2.5-flash:generateContent"


def knowctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "knowctl", *args],
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "250", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- shown: config show, repr, errors, logs -------------------------------------------------


@pytest.mark.parametrize("as_json", [True, False])
def test_config_show_hides_url_passwords(as_json: bool) -> None:
    env = {"KNOWCTL_STORE_URL": STORE, "KNOWCTL_UPSTREAM_URL": UPSTREAM, "KNOWCTL_CDN_PURGE_URL": CDN}
    result = knowctl("config", "show", *(["--json"] if as_json else []), env=env)
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    for shown in (
        "redis://:***@127.0.0.1:1/0",
        "https://gw-user:***@upstream.example/base",
        "https://cdn-user:***@api.cdn.example/client/v4",
    ):
        assert shown in result.stdout
    if as_json:
        import json

        assert json.loads(result.stdout)["store_url"] == "redis://:***@127.0.0.1:1/0"


def test_store_url_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "store_url"
    secret.write_text(STORE + "\n")
    result = knowctl("config", "show", "--json", env={"KNOWCTL_STORE_URL_FILE": str(secret)})
    assert result.returncode == 0, result.stderr
    assert '"store_url": "redis://:***@127.0.0.1:1/0"' in result.stdout and PASSWORD not in result.stdout
    # The same precedence as the other secrets: the variable itself wins over its file.
    both = knowctl(
        "config", "show", "--json",
        env={"KNOWCTL_STORE_URL_FILE": str(secret), "KNOWCTL_STORE_URL": "redis://other:6379/0"},
    )  # fmt: skip
    assert '"store_url": "redis://other:6379/0"' in both.stdout
    missing = knowctl("config", "show", env={"KNOWCTL_STORE_URL_FILE": str(tmp_path / "absent")})
    assert missing.returncode == 2 and "KNOWCTL_STORE_URL_FILE" in missing.stderr


def test_settings_repr_hides_url_passwords() -> None:
    settings = load_settings(store_url=STORE, upstream_url=UPSTREAM, cdn_purge_url=CDN)
    assert settings.store_url == STORE  # the real value is kept for the store to use
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("store_url", f"redis://:{PASSWORD}/x@127.0.0.1:6379/0"),  # '/' in the password, unencoded
        ("store_url", f"redis://:{PASSWORD}?x@127.0.0.1:6379/0"),  # '?'
        ("store_url", f"redis://:{PASSWORD}#x@127.0.0.1:6379/0"),  # '#'
        ("store_url", f"redis://:{PASSWORD}/0"),  # no '@': the password reads as a port
        ("store_url", f"redis+cluster://:{PASSWORD}/"),
        ("store_url", f"redis+sentinel://:{PASSWORD}@h:1,h:{PASSWORD}/svc"),
        ("store_url", f"memory://:{PASSWORD}@x"),
        ("upstream_url", f"https://:{PASSWORD}"),
        ("upstream_url", f"https://u:{PASSWORD}/x@up.example"),
        ("cdn_purge_url", f"https://:{PASSWORD}@"),
        ("cdn_purge_url", f"ftp://u:{PASSWORD}@cdn.example"),
    ],
)
def test_bad_urls_are_refused_without_echoing_the_password(name: str, url: str) -> None:
    result = knowctl("config", "show", env={f"KNOWCTL_{name.upper()}": url})
    assert result.returncode == 2, result.stdout
    assert name in result.stderr and "Traceback" not in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    # In Python too: a ValidationError's text does not quote the input.
    with pytest.raises(ValidationError) as caught:
        load_settings(None, **{name: url})
    assert PASSWORD not in str(caught.value)


def test_percent_encoded_password_is_accepted_and_hidden() -> None:
    settings = load_settings(store_url="redis://:p%40ss%2Fw@127.0.0.1:6379/0")
    assert redact_url(settings.store_url) == "redis://:***@127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (STORE, "redis://:***@127.0.0.1:1/0"),
        (f"rediss://user:{PASSWORD}@h:6380/2", "rediss://user:***@h:6380/2"),
        (f"https://{PASSWORD}@h/x", "https://***@h/x"),  # a lone name may be a token
        (f"redis://:p@{PASSWORD}@h/0", "redis://:***@h/0"),  # an unencoded '@' in it
        (
            f"redis+sentinel://h:1/m?sentinel_password={PASSWORD}",
            "redis+sentinel://h:1/m?sentinel_password=***",
        ),
        (f"redis://:{PASSWORD}/x@h/0", "redis://***"),  # cannot tell where it ends: show none
        ("redis://h:6379/0?db=1", "redis://h:6379/0?db=1"),
        ("memory://?max_bytes=10", "memory://?max_bytes=10"),
        ("google", "google"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert carries_credentials(url) == (PASSWORD in url)


def test_log_lines_hide_url_passwords() -> None:
    record = logging.LogRecord(
        "knowctl.test", logging.WARNING, __file__, 1, "store %s unreachable: %s", (STORE, "refused"), None
    )
    record.url = UPSTREAM  # an extra field, as some log calls add
    for formatter in (JsonFormatter(), TextFormatter("%(levelname)s %(message)s")):
        line = formatter.format(record)
        assert PASSWORD not in line and "redis://:***@127.0.0.1:1/0" in line
    assert (
        redact_text(f"error connecting to redis://u:{PASSWORD}@h:1/0.")
        == "error connecting to redis://u:***@h:1/0."
    )
    assert redact_text("no URL here, user@example.com") == "no URL here, user@example.com"


def test_gateway_never_shows_the_store_password(tmp_path: Path, simulator: Simulator) -> None:
    """/api/ready, the start-up warning and every log line, with an unreachable store."""
    handle, process = start_gateway(
        tmp_path, "--upstream", simulator.url, env={"KNOWCTL_STORE_URL": STORE, "KNOWCTL_USER_LIMITS": "none"}
    )
    with process:
        ready = httpx.get(handle.url + "/api/ready", timeout=10)
        assert ready.status_code == 200
        store = ready.json()["dependencies"]["store"]
        assert store["ok"] is False and store["url"] == "redis://:***@127.0.0.1:1/0"
        assert PASSWORD not in ready.text
        assert (
            httpx.post(handle.url + GEN, json={"contents": [{"parts": [{"text": "x"}]}]}).status_code == 200
        )
    log = handle.log_text()
    assert "unreachable at start-up" in log and "redis://:***@127.0.0.1:1/0" in log
    assert PASSWORD not in log


def test_banner_hides_url_passwords(tmp_path: Path, simulator: Simulator) -> None:
    # The userinfo is not sent upstream; the URL works as without it.
    upstream = f"http://gw-user:{PASSWORD}@{simulator.url.removeprefix('http://')}"
    handle, process = start_gateway(tmp_path, "--upstream", upstream, env={"KNOWCTL_STORE_URL": STORE})
    with process:
        assert (
            httpx.post(handle.url + GEN, json={"contents": [{"parts": [{"text": "y"}]}]}).status_code == 200
        )
    log = handle.log_text()
    assert "upstream: http://gw-user:***@127.0.0.1:" in log and "store: redis://:***@127.0.0.1:1/0" in log
    assert PASSWORD not in log


# --- read from a file: a real password-protected Redis ------------------------------------------


@pytest.fixture(scope="module")
def protected_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """A redis-server that refuses every command until AUTH with its password."""
    password = "r3dis-pw-" + os.urandom(4).hex()
    port = free_port()
    workdir = tmp_path_factory.mktemp("protected-redis")
    proc = subprocess.Popen(
        [
            server_binary(), "--port", str(port), "--bind", LOOPBACK, "--requirepass", password,
            "--save", "", "--appendonly", "no", "--dir", str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while redis_cli(port, password, "PING") != "PONG":
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield port, password
    finally:
        proc.kill()
        proc.wait(timeout=10)


def redis_cli(port: int, password: str | None, *command: str) -> str:
    import socket

    def encode(*args: str) -> bytes:
        return f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args)

    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
            if password is not None:
                sock.sendall(encode("AUTH", password))
                if not sock.recv(64).startswith(b"+OK"):
                    return "AUTH refused"
            sock.sendall(encode(*command))
            reply = sock.recv(4096).decode()
    except OSError:
        return ""
    return reply[1:].split("\r\n", 1)[0] if reply[:1] in "+-:" else reply


def test_store_url_file_end_to_end(
    tmp_path: Path, simulator: Simulator, protected_redis: tuple[int, str]
) -> None:
    port, password = protected_redis
    assert redis_cli(port, None, "PING").startswith("NOAUTH")  # it does need the password
    secret = tmp_path / "store_url"
    secret.write_text(f"redis://:{password}@{LOOPBACK}:{port}/0\n")
    handle, process = start_gateway(
        tmp_path, "--upstream", simulator.url,
        env={"KNOWCTL_STORE_URL_FILE": str(secret), "KNOWCTL_USER_LIMITS": "5/minute"},
    )  # fmt: skip
    with process:
        ready = httpx.get(handle.url + "/api/ready", timeout=10).json()
        store = ready["dependencies"]["store"]
        # ok: the store answered PING, which this server refuses without the password.
        assert store["backend"] != "memory" and store["ok"] is True, store
        assert store["url"] == f"redis://:***@{LOOPBACK}:{port}/0"
        call = {"contents": [{"parts": [{"text": "from a file"}]}]}
        assert httpx.post(handle.url + GEN, json=call).status_code == 200
        assert int(redis_cli(port, password, "DBSIZE")) > 0  # the user's window lives there
    assert password not in handle.log_text()


# --- deploy render: the password goes to a Secret only -----------------------------------------


def _docs(files: list[Any]) -> list[dict[str, Any]]:
    return [
        d for f in files if f.path.endswith((".yaml", ".yml")) for d in yaml.safe_load_all(f.content) if d
    ]


def _env_values(doc: dict[str, Any]) -> list[str]:
    if doc.get("kind") != "Deployment":
        return []
    containers = doc["spec"]["template"]["spec"]["containers"]
    return [str(e.get("value", "")) for c in containers for e in c.get("env") or []]


def test_kubernetes_render_puts_url_passwords_in_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sets = [
        f"settings.store_url=redis://:{PASSWORD}@ext-redis:6379/0",
        f"settings.upstream_url={UPSTREAM}",
        "redis.enabled=false",
    ]
    files = render("k8s", load_values(sets=sets))
    docs = _docs(files)
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            assert PASSWORD not in yaml.safe_dump(doc)
        assert not any(PASSWORD in value for value in _env_values(doc))
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["knowctl.yaml"])
    assert "store_url" not in config and "upstream_url" not in config
    (holder,) = [d for d in docs if d["kind"] == "Secret" and PASSWORD in yaml.safe_dump(d)]
    assert holder["metadata"]["name"] == "knowctl-urls"
    assert holder["stringData"] == {
        "store_url": f"redis://:{PASSWORD}@ext-redis:6379/0",
        "upstream_url": UPSTREAM.rstrip("/"),
    }
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert env["KNOWCTL_STORE_URL_FILE"] == mounts["url-secrets"] + "/store_url"
    assert env["KNOWCTL_UPSTREAM_URL_FILE"] == mounts["url-secrets"] + "/upstream_url"
    assert volumes["url-secrets"]["secret"]["secretName"] == "knowctl-urls"
    # What the pod reads: the ConfigMap's file plus the mounted key give the daemon its URL.
    (tmp_path / "knowctl.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "store_url").write_text(holder["stringData"]["store_url"])
    monkeypatch.setenv("KNOWCTL_STORE_URL_FILE", str(tmp_path / "store_url"))
    assert load_settings(tmp_path / "knowctl.yaml").store_url == holder["stringData"]["store_url"]
    written = write(files, tmp_path / "k8s")
    (secret_file,) = [p for p in written if PASSWORD in p.read_text()]
    assert secret_file.stat().st_mode & 0o077 == 0  # owner-only on disk
    report = validate_path(tmp_path / "k8s", ["1.30"])
    assert report.ok, report.problems


def test_compose_render_puts_url_passwords_in_a_secret_file(tmp_path: Path) -> None:
    files = render("compose", load_values(sets=[f"settings.store_url={STORE}", "redis.enabled=false"]))
    by_path = {f.path: f.content for f in files}
    assert by_path["secrets/store_url"].strip() == STORE
    assert all(PASSWORD not in text for path, text in by_path.items() if path != "secrets/store_url")
    compose = yaml.safe_load(by_path["docker-compose.yml"])
    gateway = compose["services"]["gateway"]
    assert gateway["environment"]["KNOWCTL_STORE_URL_FILE"] == "/run/secrets/store_url"
    assert "store_url" in gateway["secrets"]
    assert compose["secrets"]["store_url"] == {"file": "./secrets/store_url"}
    assert "store_url" not in yaml.safe_load(by_path["knowctl/knowctl.yaml"])
    write(files, tmp_path / "compose")
    assert (tmp_path / "compose/secrets/store_url").stat().st_mode & 0o077 == 0
    assert (tmp_path / "compose/secrets").stat().st_mode & 0o077 == 0
    report = validate_path(tmp_path / "compose")
    assert report.ok, report.problems


def test_render_without_passwords_is_unchanged() -> None:
    docs = _docs(render("k8s", load_values(sets=["settings.store_url=redis://shared:6379/1"])))
    assert not [d for d in docs if d["metadata"]["name"] == "knowctl-urls"]
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["knowctl.yaml"])
    assert config["store_url"] == "redis://shared:6379/1"


def test_store_url_kept_out_of_the_values_entirely() -> None:
    """secret.fields may name store_url: the operator puts the URL in the Secret."""
    fields = ["admin_token", "store_url"]
    docs = _docs(render("k8s", load_values(sets=[f"secret.fields={fields}", "redis.enabled=false"])))
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["knowctl.yaml"])
    assert "store_url" not in config
    env = {
        e["name"]: e["value"]
        for d in docs
        if d["kind"] == "Deployment"
        for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KNOWCTL_STORE_URL_FILE"] == "/run/secrets/knowctl/store_url"
    with pytest.raises(ValuesError, match="store_url"):
        load_values(sets=[f"secret.fields={fields}", f"settings.store_url={STORE}"])


def test_validate_rejects_a_url_password_in_a_configmap_or_environment() -> None:
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x"},
        "data": {"knowctl.yaml": yaml.safe_dump({"store_url": STORE}), "UPSTREAM": UPSTREAM},
    }
    problems = check_kubernetes(configmap)
    assert {p.rule for p in problems} == {"secret-in-configmap"}
    assert {p.message.split()[0] for p in problems} >= {"knowctl.yaml.store_url", "UPSTREAM"}
    assert not any(PASSWORD in p.message for p in problems)
    compose = {"services": {"gateway": {"environment": {"KNOWCTL_STORE_URL": STORE}}}}
    assert "secret-in-environment" in {p.rule for p in check_compose(compose)}


# --- --workers N: no secret in any worker's environment ------------------------------------------


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, found by the parent pid in /proc/<pid>/stat."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name, in parentheses, may hold spaces: the fields after it are fixed.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        todo += kids
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_workers_get_no_secret_in_their_environment(
    tmp_path: Path, simulator: Simulator, redis_url: str
) -> None:
    token = "adm1n-" + os.urandom(6).hex()
    cdn_token = "cdn-" + os.urandom(6).hex()
    (tmp_path / "admin_token").write_text(token + "\n")
    config = tmp_path / "knowctl.yaml"
    # From --config: a secret (must not leak either) and a limit setting the workers must see.
    config.write_text(yaml.safe_dump({"cdn_api_token": cdn_token, "user_limits": "none"}))
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    handle, process = start_gateway(
        tmp_path, "--upstream", simulator.url, "--store", redis_url, "--workers", "2", "--config", str(config),
        env={"KNOWCTL_ADMIN_TOKEN_FILE": str(tmp_path / "admin_token"), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )  # fmt: skip
    with process as proc:
        deadline = time.monotonic() + 30
        while True:
            tree = _descendants(proc.pid)
            workers = [pid for pid in tree if "spawn_main" in _cmdline(pid)]
            if len(workers) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(workers) >= 2, [_cmdline(p) for p in tree]
        for pid in [proc.pid, *tree]:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert token.encode() not in environ and cdn_token.encode() not in environ, _cmdline(pid)
            assert b"KNOWCTL_ADMIN_TOKEN=" not in environ
        # The workers still hold the token read from the file: guarded on every connection.
        stats = handle.url + "/api/quota/stats"
        for _ in range(10):  # a new connection each time, so both workers answer some
            assert httpx.get(stats, headers={"Authorization": f"Bearer {token}"}).status_code == 200
            assert httpx.get(stats).status_code == 401
            assert httpx.get(stats, headers={"Authorization": "Bearer wrong"}).status_code == 401
        # --config reached them: user_limits none (the default is 10/minute), and --store did.
        for i in range(12):
            call = {"contents": [{"parts": [{"text": f"worker call {i}"}]}]}
            assert httpx.post(handle.url + GEN, json=call).status_code == 200
        assert httpx.get(handle.url + "/api/ready").json()["dependencies"]["store"]["backend"] != "memory"
        # Both workers answered (each keeps its own counter file).
        assert len({re.sub(r"\D", "", p.name) for p in metrics_dir.glob("counter_*.db")}) >= 2
