"""The rendered Compose stack, run for real: the files ``knowctl deploy render --target
compose`` writes, with real processes on loopback instead of containers (no image can be
pulled here).

Redis, the simulator as Google, three ``knowctl serve`` gateways reading the rendered
``knowctl.yaml`` (and the secrets the rendered ``docker-compose.yml`` mounts), nginx with
the rendered ``nginx.conf`` and Prometheus with the rendered ``prometheus.yml`` and
``alerts.yml``. Only what loopback requires is changed: values the schema has for it
(fixed upstream and scrape addresses instead of Docker's DNS, a Compose subnet inside
127.0.0.0/8 so that nginx's fixed address is one nginx can connect from, a 1 s scrape and a
short ``for`` for the alert that must fire), then a few explicit text substitutions that
fail loudly when the rendered text they look for changes (listen port, pid and temp paths,
nginx's source address, Prometheus' own port), and environment variables for the gateways'
ports, store and upstream. Every other setting (trusted proxies, keep-alive, limits) is
the render's.

Checked: two visitors behind nginx each get their own per-user limit (the gateway sees the
visitor, not nginx); the CORS-exposed headers are exactly the ones the gateway sends;
Prometheus scrapes every target; every PromQL expression of the dashboards and the alert
rules returns data from the traffic (the outage alerts' after stopping Redis, then the
gateways); the quota alert fires.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from knowctl.deploy.render import render, write
from knowctl.deploy.values.loading import load_values
from tests.support.net import LOOPBACK, free_port, knowctl_process, stop_process, wait_http
from tests.support.redis_server import RedisServer, redis_server
from tests.support.simulator import Simulator, simulator_process


def _binary(name: str, *fallbacks: str) -> str | None:
    # /usr/sbin is not on every PATH (nginx lives there on Debian).
    return shutil.which(name) or next((p for p in fallbacks if os.access(p, os.X_OK)), None)


NGINX = _binary("nginx", "/usr/sbin/nginx")
PROMETHEUS = _binary("prometheus", "/usr/bin/prometheus")

pytestmark = pytest.mark.skipif(
    NGINX is None or PROMETHEUS is None,
    reason="needs the nginx and prometheus binaries (Debian packages nginx, prometheus; "
    ".ci/install-test-deps installs them)",
)

# The Compose network moved into 127.0.0.0/8: nginx's fixed address in it (the one address
# the rendered trusted_proxies names) is then a loopback address nginx can connect from.
SUBNET = "127.57.19.0/24"
# Visitors of the site: distinct client addresses, all on loopback.
VISITOR_A = "127.0.0.11"
VISITOR_B = "127.0.0.12"
CROWD = [f"127.0.1.{n}" for n in range(1, 16)]
ORIGIN = "https://app.example"
# A model with a provider quota of the test's (the Compose defaults set none): the quota
# panels and the quota alert need one. TPM is exactly one call of QUEUE_PROMPT_BYTES.
QUOTA_MODEL = "gemini-2.0-flash"
QUOTA_RPM = 5
QUOTA_TPM = 100
QUEUE_PROMPT_BYTES = 4 * QUOTA_TPM  # the simulator and the estimator count bytes / 4
FREE_MODEL = "gemini-2.5-flash"
USER_LIMIT_PER_MINUTE = 10  # the rendered default user_limits: 10/minute,100/hour,500/day
# Alerts whose condition is an outage: shown by stopping processes at the end, in this order.
OUTAGE_ALERTS = ("KnowctlStoreDown", "KnowctlDown", "KnowctlAllDown")
# The alert driven into its state and awaited until firing (its `for` rendered short).
FIRING_ALERT = "KnowctlQuotaNearLimit"
# Response headers a script may read without being exposed (Fetch: CORS-safelisted).
SAFELISTED = {
    "cache-control",
    "content-language",
    "content-length",
    "content-type",
    "expires",
    "last-modified",
    "pragma",
}
# Headers the gateway's answers carry that are for the transport, caches or CDNs, not for
# a page's scripts (the rendered CORS list leaves them out on purpose).
NOT_FOR_SCRIPTS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "date",
    "server",
    "vary",
    "cdn-cache-control",
    "surrogate-control",
}


# --- rendering and the loopback rewrites -------------------------------------------------------


def swap(text: str, old: str, new: str, count: int = 1) -> str:
    """``text`` with ``old`` replaced by ``new``; ``old`` must occur exactly ``count`` times,
    so a changed template stops the test here instead of running something else."""
    found = text.count(old)
    if found != count:
        raise AssertionError(f"the rendered file changed: expected {old!r} {count} time(s), found {found}")
    return text.replace(old, new)


def nginx_for_loopback(conf: str, run_dir: Path, port: int, source_address: str) -> str:
    # pid file and temp paths: the render's /tmp ones would clash with any other nginx.
    conf = swap(conf, "pid /tmp/nginx.pid;", f"pid {run_dir}/nginx.pid;")
    conf = swap(conf, "_temp_path /tmp/nginx-", f"_temp_path {run_dir}/nginx-", count=5)
    # The container listens on 80 (published as compose.nginx.http_port): a free loopback port.
    conf = swap(conf, "        listen 80;\n", f"        listen {LOOPBACK}:{port};\n")
    # Docker gives nginx its fixed ipv4_address on the project network; here nginx connects
    # to the gateways from that address itself.
    conf = swap(
        conf,
        "proxy_pass http://knowctl_gateway;\n",
        f"proxy_pass http://knowctl_gateway;\n            proxy_bind {source_address};\n",
    )
    return conf


def prometheus_for_loopback(config: str, port: int) -> str:
    # Prometheus scrapes itself on the container's 9090: on loopback, on its free port.
    return swap(config, '"127.0.0.1:9090"', f'"{LOOPBACK}:{port}"')


def render_sets(gateway_ports: Sequence[int]) -> list[str]:
    servers = json.dumps([f"{LOOPBACK}:{p}" for p in gateway_ports])
    quota = json.dumps({QUOTA_MODEL: {"rpm": QUOTA_RPM, "tpm": QUOTA_TPM}})
    return [
        f"compose.subnet={SUBNET}",
        # Fixed addresses instead of the `gateway` service name (Docker's DNS): both knobs
        # exist for that; nginx's `resolve` also needs nginx 1.27.3, Debian's is older.
        f"compose.nginx.upstream_servers={servers}",
        "compose.nginx.dynamic_dns=false",
        f"compose.monitoring.gateway_targets={servers}",
        "compose.monitoring.scrape_interval=1s",
        f"compose.monitoring.alert_for.{FIRING_ALERT}=1s",
        f"settings.quota_models={quota}",
        # Visitors without a key may have a topic generated: their address is then who is
        # counted against the per-user limit (the default in keys mode is keys only).
        "settings.topics_generate=anyone",
    ]


def gateway_env(out: Path, compose: dict[str, Any]) -> dict[str, str]:
    """The gateway container's environment from the rendered docker-compose.yml, with the
    config and secret files it mounts mapped to the rendered files on this machine."""
    service = compose["services"]["gateway"]
    mounts = {c["target"]: out / compose["configs"][c["source"]]["file"] for c in service["configs"]}
    for name in service.get("secrets", []):
        mounts[f"/run/secrets/{name}"] = out / compose["secrets"][name]["file"]
    env = {}
    for name, value in service["environment"].items():
        if str(value).startswith("/"):
            assert value in mounts, f"{name}={value}: not a file docker-compose.yml mounts"
            value = mounts[value]
        env[name] = str(value)
    return env


# --- processes -----------------------------------------------------------------------------------


@contextlib.contextmanager
def running(cmd: Sequence[str], ready_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``cmd`` until the block ends (SIGTERM, then SIGKILL), its output in ``log``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_http(ready_url, timeout=30, proc=proc)
            yield proc
        finally:
            stop_process(proc)


@dataclass
class Stack:
    out: Path
    logs: Path
    nginx_url: str
    nginx_address: str  # its fixed address on the Compose network, as rendered
    prometheus_url: str
    gateways: list[tuple[str, subprocess.Popen[bytes]]]
    redis: RedisServer
    simulator: Simulator
    admin_token: str
    files: dict[str, str] = field(default_factory=dict)

    def diagnostics(self) -> str:
        tails = []
        for log in sorted(self.logs.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-8:]
            tails.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(tails)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    assert NGINX is not None and PROMETHEUS is not None
    out, logs = tmp_path / "compose", tmp_path / "logs"
    logs.mkdir()
    gateway_ports = [free_port() for _ in range(3)]
    values = load_values(sets=render_sets(gateway_ports))
    write(render("compose", values), out)
    compose = yaml.safe_load((out / "docker-compose.yml").read_text())
    assert compose["services"]["gateway"]["deploy"]["replicas"] == len(gateway_ports)
    nginx_address = compose["services"]["nginx"]["networks"]["default"]["ipv4_address"]
    config = yaml.safe_load((out / "knowctl" / "knowctl.yaml").read_text())
    # The render ties them: the gateways believe X-Forwarded-For from nginx's address alone.
    assert config["trusted_proxies"] == f"{nginx_address}/32"

    # The secret files the operator creates (docs/deploy-compose.md, section 2).
    admin_token = secrets.token_hex(16)
    (out / "secrets").mkdir(mode=0o700, exist_ok=True)
    for name in compose["secrets"]:
        value = admin_token if name == "admin_token" else f"test-{name}"
        (out / "secrets" / name).write_text(value + "\n")

    with contextlib.ExitStack() as processes:
        redis = processes.enter_context(redis_server())
        simulator = processes.enter_context(simulator_process(log_path=logs / "simulator.log"))
        env = gateway_env(out, compose)
        gateways = []
        for port in gateway_ports:
            url = f"http://{LOOPBACK}:{port}"
            loopback = {
                "KNOWCTL_HOST": LOOPBACK,  # rendered 0.0.0.0: the container's address
                "KNOWCTL_PORT": str(port),
                "KNOWCTL_STORE_URL": redis.url,  # rendered redis://redis:6379/0
                "KNOWCTL_UPSTREAM_URL": simulator.url,  # rendered: Google
            }
            proc = processes.enter_context(
                knowctl_process(
                    ["serve"],
                    f"{url}/api/health",
                    env={**env, **loopback},
                    log_path=logs / f"gateway-{port}.log",
                )
            )
            gateways.append((url, proc))

        # nginx workers run as nobody under root: their temp directories must be reachable.
        run_dir = Path(processes.enter_context(tempfile.TemporaryDirectory(prefix="knowctl-nginx-")))
        run_dir.chmod(0o755)
        nginx_port = free_port()
        conf = nginx_for_loopback(
            (out / "nginx" / "nginx.conf").read_text(), run_dir, nginx_port, nginx_address
        )
        (run_dir / "nginx.conf").write_text(conf)
        nginx_url = f"http://{LOOPBACK}:{nginx_port}"
        processes.enter_context(
            running(
                [
                    NGINX,
                    "-p",
                    str(run_dir),
                    "-c",
                    str(run_dir / "nginx.conf"),
                    "-e",
                    "stderr",
                    "-g",
                    "daemon off;",
                ],
                f"{nginx_url}/nginx-health",
                logs / "nginx.log",
            )
        )

        prom_port = free_port()
        prom_yml = out / "prometheus" / "prometheus.yml"
        prom_yml.write_text(prometheus_for_loopback(prom_yml.read_text(), prom_port))
        prometheus_url = f"http://{LOOPBACK}:{prom_port}"
        data = processes.enter_context(tempfile.TemporaryDirectory(prefix="knowctl-prometheus-"))
        command = _prometheus_command(compose, out, data, prom_port)
        processes.enter_context(
            running([PROMETHEUS, *command], f"{prometheus_url}/-/ready", logs / "prometheus.log")
        )
        _wait(
            lambda: httpx.get(f"{prometheus_url}/-/ready", timeout=2).status_code == 200,
            30,
            "Prometheus ready",
        )

        files = {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*") if p.is_file()}
        yield Stack(
            out=out,
            logs=logs,
            nginx_url=nginx_url,
            nginx_address=nginx_address,
            prometheus_url=prometheus_url,
            gateways=gateways,
            redis=redis,
            simulator=simulator,
            admin_token=admin_token,
            files=files,
        )


def _prometheus_command(compose: dict[str, Any], out: Path, data: str, port: int) -> list[str]:
    """The rendered Prometheus command, its container paths mapped to this machine."""
    command = []
    for arg in compose["services"]["prometheus"]["command"]:
        if arg.startswith("--config.file=/etc/prometheus/"):  # ./prometheus:/etc/prometheus:ro
            arg = f"--config.file={out / 'prometheus' / arg.rsplit('/', 1)[1]}"
        elif arg.startswith("--storage.tsdb.path="):  # a volume
            arg = f"--storage.tsdb.path={data}"
        command.append(arg)
    assert any(a.startswith("--config.file=") for a in command), command
    return [*command, f"--web.listen-address={LOOPBACK}:{port}"]


def _wait(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if ready():
                return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


# --- clients -------------------------------------------------------------------------------------


@dataclass
class Seen:
    """Header names of every model and topic answer through nginx, and the CORS list each had."""

    names: set[str] = field(default_factory=set)
    exposed: set[str] = field(default_factory=set)
    answers: int = 0

    def record(self, response: httpx.Response) -> None:
        self.answers += 1
        self.names |= {name.lower() for name in response.headers}
        listed = response.headers.get("access-control-expose-headers")
        assert listed is not None, f"{response.request.url}: no Access-Control-Expose-Headers"
        self.exposed |= {h.strip().lower() for h in listed.split(",") if h.strip()}


def client(stack: Stack, seen: Seen, address: str = LOOPBACK, key: str | None = None) -> httpx.Client:
    """A browser-like client of the site (an Origin on every call) from ``address``."""
    headers = {"origin": ORIGIN}
    if key is not None:
        headers["x-goog-api-key"] = key
    return httpx.Client(
        base_url=stack.nginx_url,
        transport=httpx.HTTPTransport(local_address=address),
        headers=headers,
        timeout=30,
        event_hooks={"response": [seen.record]},
    )


def new_key(stack: Stack, user: str) -> str:
    response = httpx.post(
        f"{stack.nginx_url}/api/keys",
        json={"user": user},
        headers={"authorization": f"Bearer {stack.admin_token}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def body(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def generate(model: str) -> str:
    return f"/v1beta/models/{model}:generateContent"


def remaining(response: httpx.Response, window: str = "minute") -> int:
    """What the RateLimit header says is left in ``window``."""
    found = re.search(rf'"{window}";r=(\d+)', response.headers.get("ratelimit", ""))
    assert found, f"no {window} in RateLimit: {response.headers.get('ratelimit')!r}"
    return int(found.group(1))


# --- Prometheus ------------------------------------------------------------------------------------


def query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{stack.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    answer = response.json()
    assert answer.get("status") == "success", f"{expr}: {answer}"
    result = answer["data"]["result"]
    return [result] if answer["data"]["resultType"] == "scalar" else list(result)


# Grafana's built-in variables, at the values a 1 s scrape interval gives them.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "1s", "__range": "5m", "__range_s": "300"}


def concrete(expr: str, dashboard: dict[str, Any]) -> str:
    """``expr`` with Grafana's variables replaced by what Prometheus can evaluate: the
    built-ins by durations, a dashboard's own variables by a regex for all values."""
    own = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name in own:
            return ".+"
        raise AssertionError(f"unknown Grafana variable ${name} in {expr!r}")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def _targets(panels: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in panels:
        yield from _targets(panel.get("panels", []))  # rows hold their panels
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel.get("title", "?"), target


def dashboard_exprs(stack: Stack) -> dict[str, str]:
    """Every panel target's expression, by where it is."""
    found = {}
    for path, text in sorted(stack.files.items()):
        if path.startswith("grafana/dashboards/") and path.endswith(".json"):
            dashboard = json.loads(text)
            for n, (title, target) in enumerate(_targets(dashboard["panels"])):
                found[f"{path}: {title} #{n}"] = concrete(target["expr"], dashboard)
    assert len(found) >= 30, found  # the five dashboards
    return found


def alert_exprs(stack: Stack) -> dict[str, str]:
    rules = yaml.safe_load(stack.files["prometheus/alerts.yml"])
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


def wait_for_data(stack: Stack, exprs: dict[str, str], timeout: float) -> None:
    """Until every expression returns a non-empty result; fails naming those that do not."""
    pending = dict(exprs)
    deadline = time.monotonic() + timeout
    while True:
        pending = {where: expr for where, expr in pending.items() if not query(stack, expr)}
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not pending, "no data for:\n" + "\n".join(f"  {w}: {e}" for w, e in pending.items())


def wait_firing(stack: Stack, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    states: list[str] = []
    while time.monotonic() < deadline:
        alerts = httpx.get(f"{stack.prometheus_url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        states = [a["state"] for a in alerts if a["labels"].get("alertname") == name]
        firing = [a for a in alerts if a["labels"].get("alertname") == name and a["state"] == "firing"]
        if firing:
            return dict(firing[0])
        time.sleep(0.5)
    raise AssertionError(f"{name} not firing within {timeout}s (states seen last: {states})")


# --- the traffic ------------------------------------------------------------------------------------


def visitors_get_their_own_limits(stack: Stack, seen: Seen) -> None:
    """Issue: 'ten GETs of /topics/photosynthesis gave four 200s and six 429s for user
    127.0.0.1'. Behind nginx each visitor is its own address, with its own per-user limit."""
    with client(stack, seen, VISITOR_A) as a, client(stack, seen, VISITOR_B) as b:
        answers = [a.get(f"/topics/visitor-a-{n}") for n in range(USER_LIMIT_PER_MINUTE + 1)]
        codes = [r.status_code for r in answers]
        assert codes == [200] * USER_LIMIT_PER_MINUTE + [429], codes
        assert [remaining(r) for r in answers[:3]] == [9, 8, 7]
        refused = answers[-1].json()["error"]["message"]
        assert f"address {VISITOR_A} " in refused, refused
        assert stack.nginx_address not in refused and "127.0.0.1 " not in refused
        assert "retry-after" in answers[-1].headers
        # What a client claims is to the left of what nginx saw: it buys no fresh limit.
        spoofed = a.get("/topics/visitor-a-spoofed", headers={"x-forwarded-for": "203.0.113.9"})
        assert spoofed.status_code == 429 and f"address {VISITOR_A} " in spoofed.text, spoofed.text
        # A cached topic is free, also to a visitor over its limit.
        cached = a.get("/topics/visitor-a-0")
        assert cached.status_code == 200 and cached.headers["x-knowctl-cache"].startswith("HIT-")
        assert "etag" in cached.headers
        # The other visitor has all of its own limit.
        other = b.get("/topics/visitor-b-0")
        assert other.status_code == 200, other.text
        assert remaining(other) == USER_LIMIT_PER_MINUTE - 1


def cache_hits_and_streams(stack: Stack, seen: Seen) -> None:
    with client(stack, seen, key=new_key(stack, "bob")) as bob:
        first = bob.post(generate(FREE_MODEL), json=body("hello from bob"))
        again = bob.post(generate(FREE_MODEL), json=body("hello from bob"))
        assert first.status_code == again.status_code == 200, again.text
        assert first.headers["x-knowctl-cache"] == "MISS"
        assert again.headers["x-knowctl-cache"].startswith("HIT-") and "age" in again.headers
        stream = f"/v1beta/models/{FREE_MODEL}:streamGenerateContent?alt=sse"
        for label in ("MISS", "HIT-"):
            with bob.stream("POST", stream, json=body("a stream for bob")) as response:
                text = response.read().decode()
            assert response.status_code == 200 and response.headers["x-knowctl-cache"].startswith(label)
            assert response.headers["content-type"].startswith("text/event-stream")
            assert text.count("data: ") >= 2, text


def an_upload_streams_through(stack: Stack, seen: Seen) -> None:
    """A resumable upload as google-genai makes it, its chunks through nginx unbuffered: the
    upload URL the gateway answers names the site as the client reached it, and the file is
    its uploader's."""
    data = os.urandom(3 * 1024 * 1024)
    half = len(data) // 2
    with client(stack, seen, key=new_key(stack, "erin")) as erin:
        start = erin.post(
            "/upload/v1beta/files",
            headers={
                "x-goog-upload-protocol": "resumable",
                "x-goog-upload-command": "start",
                "x-goog-upload-header-content-length": str(len(data)),
                "x-goog-upload-header-content-type": "application/octet-stream",
            },
            json={"file": {"displayName": "erin's notes"}},
        )
        assert start.status_code == 200, start.text
        url = start.headers["x-goog-upload-url"]
        assert url.startswith(f"{stack.nginx_url}/upload/v1beta/files?upload_id="), url
        first = erin.post(
            url, headers={"x-goog-upload-command": "upload", "x-goog-upload-offset": "0"}, content=data[:half]
        )
        assert first.status_code == 200 and first.headers["x-goog-upload-status"] == "active", first.text
        done = erin.post(
            url,
            headers={"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": str(half)},
            content=data[half:],
        )
        assert done.status_code == 200 and done.headers["x-goog-upload-status"] == "final", done.text
        name = done.json()["file"]["name"]
        assert int(done.json()["file"]["sizeBytes"]) == len(data)
        assert erin.get(f"/v1beta/{name}").status_code == 200
    with client(stack, seen, key=new_key(stack, "frank")) as frank:
        assert frank.get(f"/v1beta/{name}").status_code == 403  # not frank's


def server_errors(stack: Stack, seen: Seen, user: str, count: int) -> None:
    """``count`` 5xx answers: the provider fails (the simulator's injected 500)."""
    stack.simulator.configure(fault="error500", count=count)
    try:
        with client(stack, seen, key=new_key(stack, user)) as caller:
            codes = [
                caller.post(generate(FREE_MODEL), json=body(f"{user} fails {n}")).status_code
                for n in range(count)
            ]
    finally:
        stack.simulator.configure(fault=None)
    assert codes == [500] * count, codes


def a_call_queues_for_quota(stack: Stack, alice: httpx.Client) -> None:
    """One call takes the whole token window and its provider refuses it (403, which spends
    no quota, and which the tenant sees as a 502); a second call waits in the queue meanwhile
    and goes once the first gives its tokens back."""
    faults = stack.simulator.stats()["faults"]
    stack.simulator.configure(latency_ms=1500, fault="denied", count=1)
    try:
        with ThreadPoolExecutor(2) as pool:
            big = pool.submit(alice.post, generate(QUOTA_MODEL), json=body("q" * QUEUE_PROMPT_BYTES))
            # Once the provider has it, its tokens are reserved: the next call must wait.
            _wait(lambda: stack.simulator.stats()["faults"] > faults, 10, "the big call upstream")
            small = pool.submit(alice.post, generate(QUOTA_MODEL), json=body("queued behind the big one"))
            refused, queued = big.result(), small.result()
    finally:
        stack.simulator.configure(latency_ms=0, fault=None)
    assert refused.status_code == 502, refused.text
    assert refused.headers["x-request-id"] in refused.json()["error"]["message"]
    assert queued.status_code == 200, queued.text
    metrics = "".join(httpx.get(f"{url}/api/metrics", timeout=5).text for url, _ in stack.gateways)
    assert re.search(r'^knowctl_quota_decisions_total\{[^}]*decision="queued"[^}]*\} [1-9]', metrics, re.M), (
        "the second call was not queued"
    )


def crowd_of_misses(stack: Stack, seen: Seen) -> None:
    """Many visitors, each reading topics nobody read before: a low cache hit rate, with
    more than the 0.1 lookups/s over 15 minutes the alert asks for."""

    def visit(address: str) -> list[int]:
        with client(stack, seen, address) as visitor:
            return [
                visitor.get(f"/topics/crowd-{address}-{n}").status_code for n in range(USER_LIMIT_PER_MINUTE)
            ]

    with ThreadPoolExecutor(5) as pool:
        codes = [code for codes in pool.map(visit, CROWD) for code in codes]
    assert codes == [200] * len(codes), codes


def quota_nearly_used(stack: Stack, alice: httpx.Client) -> None:
    # With the queued call, QUOTA_RPM calls in this minute: above the alert's 80 %.
    for n in range(QUOTA_RPM - 1):
        response = alice.post(generate(QUOTA_MODEL), json=body(f"alice asks {n}"))
        assert response.status_code == 200, response.text


# --- the test ------------------------------------------------------------------------------------


def test_rendered_compose_stack(stack: Stack) -> None:
    try:
        _run(stack)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n\nprocess logs (tails):\n{stack.diagnostics()}") from None


def _run(stack: Stack) -> None:
    # 3. Prometheus scrapes every target of the rendered config: the three gateways, itself.
    def all_up() -> bool:
        targets = httpx.get(f"{stack.prometheus_url}/api/v1/targets", timeout=5).json()["data"]
        active = targets["activeTargets"]
        return len(active) == len(stack.gateways) + 1 and all(t["health"] == "up" for t in active)

    _wait(all_up, 20, "every scrape target up")

    seen = Seen()
    # 1. Each visitor behind nginx has its own limits.
    visitors_get_their_own_limits(stack, seen)
    cache_hits_and_streams(stack, seen)
    an_upload_streams_through(stack, seen)
    with client(stack, seen, key=new_key(stack, "alice")) as alice:
        a_call_queues_for_quota(stack, alice)
        # A rate needs a series' earlier sample: the first 5xx of each gateway, and its first
        # cache lookups, are only that. The traffic the thresholds count comes after a scrape.
        server_errors(stack, seen, "carol", 3)
        time.sleep(2.5)
        server_errors(stack, seen, "dave", 8)
        crowd_of_misses(stack, seen)
        quota_nearly_used(stack, alice)

    # 2. The CORS-exposed headers are exactly those the gateway sends that scripts may need.
    assert seen.answers > 100
    sent = {n for n in seen.names - SAFELISTED - NOT_FOR_SCRIPTS if not n.startswith("access-control-")}
    assert sent <= seen.exposed, f"sent but not exposed to scripts: {sorted(sent - seen.exposed)}"
    assert seen.exposed <= seen.names, f"exposed but never sent: {sorted(seen.exposed - seen.names)}"

    # 4. Every dashboard expression, and every alert's expected from the traffic, has data.
    alerts = alert_exprs(stack)
    assert set(OUTAGE_ALERTS) | {FIRING_ALERT} <= set(alerts), sorted(alerts)
    traffic_alerts = {f"alert {n}": e for n, e in alerts.items() if n not in OUTAGE_ALERTS}
    wait_for_data(stack, {**dashboard_exprs(stack), **traffic_alerts}, timeout=20)

    # 5. The quota alert fires (its `for` rendered short).
    fired = wait_firing(stack, FIRING_ALERT, timeout=20)
    assert fired["labels"]["model"] == QUOTA_MODEL, fired

    # The outage alerts: Redis goes away, then one gateway, then the others.
    stack.redis.stop()
    wait_for_data(stack, {"alert KnowctlStoreDown": alerts["KnowctlStoreDown"]}, timeout=20)
    stop_process(stack.gateways[0][1])
    wait_for_data(stack, {"alert KnowctlDown": alerts["KnowctlDown"]}, timeout=20)
    for _, proc in stack.gateways[1:]:
        stop_process(proc)
    wait_for_data(stack, {"alert KnowctlAllDown": alerts["KnowctlAllDown"]}, timeout=20)
