"""The operator's CLI against real daemons: what a new operator meets first.

Every case runs the real ``knowctl`` command in a subprocess (no terminal unless a pty is
given) against real ``knowctl serve`` processes, the shared simulator and the real Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.cli import run_knowctl
from tests.support.fixtures import Gateway, Simulator, start_gateway

ROOT = Path(__file__).resolve().parents[2]
MODEL = "gemini-2.5-flash"
GENERATE = f"/v1beta/models/{MODEL}:generateContent"


def body(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def knowctl(*args: str, url: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_knowctl(args[0], *args[1:], env={"KNOWCTL_URL": url, **(env or {})})


def on_a_terminal(*args: str, url: str, answer: str) -> tuple[int, str]:
    """Run ``knowctl ARGS`` with a terminal (a pty) as standard input, typing ``answer``."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "knowctl", *args],
            env={**os.environ, "KNOWCTL_URL": url},
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        os.write(controller, answer.encode())
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    return proc.returncode, out


# --- cache invalidate: goes on until done, on every daemon ------------------------------------------


@pytest.fixture
def pair(tmp_path: Path, simulator: Simulator, redis_url: str) -> Iterator[tuple[Gateway, Gateway]]:
    env = {"KNOWCTL_STORE_URL": redis_url, "KNOWCTL_AUTH_MODE": "anonymous", "KNOWCTL_USER_LIMITS": "none"}
    a, proc_a = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    b, proc_b = start_gateway(tmp_path, "--upstream", simulator.url, env=env)
    with proc_a, proc_b:
        yield a, b


def send_all(gateway: Gateway, topic: str, prompts: list[str]) -> list[str]:
    """POST every prompt (labelled with ``topic``) at once; their X-Knowctl-Cache labels."""

    async def run() -> list[str]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits) as client:
            answers = await asyncio.gather(
                *(client.post(GENERATE, json=body(p), headers={"x-knowctl-topic": topic}) for p in prompts)
            )
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
        return [a.headers["x-knowctl-cache"] for a in answers]

    return asyncio.run(run())


def matching(gateway: Gateway, pattern: str) -> int:
    done = knowctl("cache", "invalidate", pattern, "--dry-run", "--json", url=gateway.url)
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["matched"])


def test_invalidate_removes_more_than_a_batch_from_every_daemon(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    topic = f"inv{uuid.uuid4().hex[:10]}"
    prompts = [f"{topic} {i}" for i in range(120)]
    assert set(send_all(a, topic, prompts)) == {"MISS"}
    assert set(send_all(b, topic, prompts)) == {"HIT-L2"}  # now in b's own memory too
    assert set(send_all(b, topic, prompts)) == {"HIT-L1"}
    pattern = f"topic:{topic}:*"
    assert matching(a, pattern) == 120

    done = knowctl("cache", "invalidate", pattern, "--yes", "--json", url=a.url)  # batches of 100
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["matched"], result["deleted"], result["remaining"], result["calls"]) == (120, 120, 0, 2)
    assert matching(a, pattern) == 0
    # The other daemon dropped every one from its memory as well: all are misses there.
    assert set(send_all(b, topic, prompts)) == {"MISS"}

    # Small batches: as many calls as it takes, and a table for people.
    assert matching(b, pattern) == 120
    table = knowctl("cache", "invalidate", pattern, "--yes", "--batch", "50", url=b.url)
    assert table.returncode == 0, table.stderr
    assert "Removed 120 matching key(s)" in table.stdout and "in 3 calls" in table.stdout
    assert set(send_all(a, topic, prompts[:10])) == {"MISS"}


# --- destructive commands: one rule without a terminal ------------------------------------------------


def test_destructive_commands_refuse_without_a_terminal_and_ask_on_one(
    pair: tuple[Gateway, Gateway], keys_daemon: Gateway
) -> None:
    a, _ = pair
    topic = f"ask{uuid.uuid4().hex[:10]}"
    send_all(a, topic, [f"{topic} {i}" for i in range(3)])
    pattern = f"topic:{topic}:*"

    refused = knowctl("cache", "invalidate", pattern, url=a.url)
    assert refused.returncode == 2, refused.stderr
    assert "not a terminal" in refused.stderr and "--yes" in refused.stderr
    assert matching(a, pattern) == 3  # nothing was removed

    created = knowctl("keys", "create", "--user", "carol", "--json", url=keys_daemon.url)
    key = json.loads(created.stdout)
    revoke = knowctl("keys", "revoke", key["key_id"], url=keys_daemon.url)
    assert revoke.returncode == 2 and "not a terminal" in revoke.stderr and "--yes" in revoke.stderr
    assert call_with_key(keys_daemon, key["key"]) == 200  # still valid

    # On a terminal they ask: no changes nothing (exit 1), yes goes ahead.
    code, out = on_a_terminal("cache", "invalidate", pattern, url=a.url, answer="n\n")
    assert code == 1 and "3 key(s) match" in out and "aborted" in out
    assert matching(a, pattern) == 3
    code, out = on_a_terminal("cache", "invalidate", pattern, url=a.url, answer="y\n")
    assert code == 0 and "Removed 3 matching key(s)" in out, out
    assert matching(a, pattern) == 0
    code, out = on_a_terminal("keys", "revoke", key["key_id"], url=keys_daemon.url, answer="y\n")
    assert code == 0 and f"Revoked key {key['key_id']}" in out, out
    assert call_with_key(keys_daemon, key["key"]) == 403


# --- keys: the README's example works, and a key nobody can use is pointed out --------------------


def readme_block(language: str, containing: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"README: one ```{language} block with {containing!r}"
    return found[0]


@pytest.fixture(scope="module")
def keys_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The README's keys example: ``serve --simulate`` in keys mode with its knowctl.yaml."""
    folder = tmp_path_factory.mktemp("keys-daemon")
    config = folder / "knowctl.yaml"
    config.write_text(readme_block("yaml", "tiers:"), encoding="utf-8")
    commands = readme_block("bash", "keys create --user alice --tier pro")
    serve = next(line for line in commands.splitlines() if " serve " in line).split("#")[0].split()
    env = dict(word.split("=", 1) for word in serve[: serve.index("knowctl")])
    flags = serve[serve.index("serve") + 1 :]
    flags[flags.index("knowctl.yaml")] = str(config)
    handle, process = start_gateway(folder, *flags, env={"KNOWCTL_USER_LIMITS": "none", **env})
    with process:
        yield handle


def call_with_key(gateway: Gateway, key: str) -> int:
    headers = {"x-goog-api-key": key}
    return httpx.post(gateway.url + GENERATE, json=body("hi"), headers=headers, timeout=30).status_code


def test_the_readmes_keys_example_works(keys_daemon: Gateway) -> None:
    commands = readme_block("bash", "keys create --user alice --tier pro")
    line = next(ln for ln in commands.splitlines() if "--tier pro" in ln).split("#")[0].split()
    assert line[0] == "knowctl"
    made = knowctl(*line[1:], "--json", url=keys_daemon.url)
    assert made.returncode == 0, made.stderr
    assert "warning" not in made.stderr  # keys mode: the key is used
    created = json.loads(made.stdout)
    assert created["tier"] == "pro"
    assert call_with_key(keys_daemon, created["key"]) == 200
    usage = knowctl("users", "usage", created["user"], "--json", url=keys_daemon.url)
    assert usage.returncode == 0 and json.loads(usage.stdout)["tier"] == "pro"
    # A tier the config file does not name: a clear message, exit 2.
    unknown = knowctl("keys", "create", "--user", "alice", "--tier", "gold", url=keys_daemon.url)
    assert unknown.returncode == 2 and "unknown tier 'gold'" in unknown.stderr and "pro" in unknown.stderr


def test_a_key_created_in_anonymous_mode_warns(tmp_path: Path) -> None:
    handle, process = start_gateway(tmp_path, "--simulate")
    with process:
        made = knowctl("keys", "create", "--user", "dave", "--json", url=handle.url)
        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout)["user"] == "dave"  # stdout stays one JSON document
        assert "warning" in made.stderr and "anonymous auth mode" in made.stderr
        assert "KNOWCTL_AUTH_MODE=keys" in made.stderr


# --- --url, quota stats --watch ------------------------------------------------------------------------


def test_a_url_without_its_scheme_is_bad_input(gateway: Gateway) -> None:
    bare = gateway.url.removeprefix("http://")
    for env in ({}, {"KNOWCTL_URL": bare}):
        args = ("quota", "stats") if env else ("quota", "stats", "--url", bare)
        done = run_knowctl(*args, env=env)
        assert done.returncode == 2, done.stderr
        assert "is not a daemon URL" in done.stderr and f"did you mean http://{bare}" in done.stderr
    assert run_knowctl("quota", "stats", "--url", gateway.url).returncode == 0


def test_quota_watch_prints_a_line_per_interval_into_a_pipe(tmp_path: Path) -> None:
    handle, process = start_gateway(tmp_path, "--simulate", env={"KNOWCTL_QUOTA_RPM": "50"})
    with process:
        assert httpx.post(handle.url + GENERATE, json=body("watch me"), timeout=30).status_code == 200
        proc = subprocess.Popen(
            [sys.executable, "-m", "knowctl", "quota", "stats", "--watch", "--interval", "0.2"],
            env={**os.environ, "KNOWCTL_URL": handle.url},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Ctrl-C as a terminal sends it: a runner started in the background (SIGINT
            # ignored, which children inherit) must not make Python ignore it too.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        lines: list[str] = []
        started = time.monotonic()
        try:
            assert proc.stdout is not None
            while len(lines) < 4 and time.monotonic() - started < 30:
                lines.append(proc.stdout.readline())
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=15)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert len(lines) == 4 and all(line.endswith("\n") for line in lines), lines
    assert all(f"{MODEL}: rpm=1/50" in line for line in lines), lines
    stamps = [line.split()[0] for line in lines]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", s) for s in stamps), stamps


# --- deploy: --set types, and a missing validator ------------------------------------------------------


def test_set_values_take_the_schemas_types(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    done = run_knowctl(
        "deploy", "render", "--target", "k8s", "--out", str(out),
        "--set", "image.tag=1.10", "--set", "gateway.resources.cpu_limit=2",
        "--set", "gateway.replicas=4", "--set", "gateway.autoscaling.enabled=false",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    documents = [d for f in sorted(out.rglob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    deployment = next(
        d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "knowctl"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith(":1.10")  # not 1.1: the text as given
    assert container["resources"]["limits"]["cpu"] == "2"
    assert deployment["spec"]["replicas"] == 4  # an integer where the schema wants one
    bad = run_knowctl("deploy", "render", "--target", "k8s", "--set", "gateway.replicas=many")
    assert bad.returncode == 2 and "gateway.replicas" in bad.stderr


def test_a_missing_validator_is_a_failure_with_the_right_install_command(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    assert run_knowctl("deploy", "render", "--target", "k8s", "--out", str(out)).returncode == 0
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for module in ("kubernetes_validate", "docker"):  # as if knowctl[deploy] were not installed
        (hidden / f"{module}.py").write_text("raise ImportError('not installed (test)')\n")
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(hidden), os.environ.get("PYTHONPATH")) if p)}
    for args in (("deploy", "validate", str(out)), ("deploy", "status")):
        done = run_knowctl(*args, env=env)
        assert done.returncode == 1, (args, done.returncode, done.stderr)  # could not run, not bad input
        message = " ".join(done.stderr.split())
        # This checkout's own extra, into the Python that runs knowctl, not the index's package.
        assert f"{sys.executable} -m pip install -e '{ROOT}[deploy]'" in message, message


def test_serve_with_a_pool_key_file_it_cannot_read_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    missing = tmp_path / "no-such-key"
    config.write_text(f"upstreams:\n  - name: studio\n    api_key_file: {missing}\n")
    done = subprocess.run(
        [sys.executable, "-m", "knowctl", "serve", "--config", str(config), "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "upstreams.studio.api_key_file" in done.stderr and "Traceback" not in done.stderr
