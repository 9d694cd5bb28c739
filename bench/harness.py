"""Processes and measurements shared by the bench cases: free ports, a private redis-server,
the simulator, the gateway and the bare baseline app, wrk runs, RSS and machine load.

Everything listens on 127.0.0.1 only, and every load run is bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
INTERACTIONS = "/v1beta/interactions"
OPENAI_CHAT = "/v1beta/openai/chat/completions"
EMBED_BATCH = "/v1beta/models/gemini-embedding-001:batchEmbedContents"

# The gateway under test: per-user limits and provider quota on Redis, limits generous enough
# that the load never hits them (the point is their cost, not their refusals).
GATEWAY_ENV = {
    "KNOWCTL_AUTH_MODE": "anonymous",
    "KNOWCTL_USER_LIMITS": "1000000000/minute",
    "KNOWCTL_QUOTA_RPM": "1000000000",
    "KNOWCTL_QUOTA_TPM": "1000000000000",
    # The simulator counts tokens as bytes / 4, exactly the gateway's default estimate; a real
    # provider never matches it, so every call's reservation is corrected after the answer.
    # A different divisor makes the bench pay that correction (one more store command) too.
    "KNOWCTL_TOKEN_BYTES_PER_TOKEN": "3.5",
    "KNOWCTL_LOG_LEVEL": "warning",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    name: str
    url: str
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


def _wait_ready(proc: subprocess.Popen[bytes], url: str, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


@contextlib.contextmanager
def service(
    name: str, argv: list[str], ready: str, url: str, env: Mapping[str, str] | None = None
) -> Iterator[Service]:
    full_env = {**os.environ, "NO_GCE_CHECK": "True", **(env or {})}
    with tempfile.TemporaryFile() as log:  # its stderr, shown if it fails to start
        proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            try:
                _wait_ready(proc, ready, name)
            except RuntimeError:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace")[-3000:])
                raise
            yield Service(name, url, proc)
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A private, non-persistent redis-server on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        sys.exit("bench needs redis-server (or valkey-server) on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def redis_command(url: str, *args: str | bytes) -> bytes:
    """One command over a raw socket (RESP), for set-up only: FLUSHALL, SET of the baseline answer."""
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"".join(parts))
        return s.recv(4096)


def simulator(**config: float) -> contextlib.AbstractContextManager[Service]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "knowctl", "simulate", "--port", str(port)]
    for name, value in config.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return service("simulator", argv, f"{url}/_simulator/stats", url)


def configure_simulator(sim: Service, **changes: float) -> None:
    httpx.post(f"{sim.url}/_simulator/config", json=changes, timeout=5).raise_for_status()


def gateway(upstream: str, store_url: str, **extra_env: str) -> contextlib.AbstractContextManager[Service]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable,
        "-m",
        "knowctl",
        "serve",
        "--port",
        str(port),
        "--upstream",
        upstream,
        "--store",
        store_url,
    ]
    return service("gateway", argv, f"{url}/api/health", url, env={**GATEWAY_ENV, **extra_env})


@contextlib.contextmanager
def pool_gateway(upstream: str, store_url: str, deployments: int = 3) -> Iterator[Service]:
    """The gateway with a pool of ``deployments`` upstream deployments (all at ``upstream``),
    each declaring the bench's generous limits for the bench's models: what admission over
    several lanes costs beside one."""
    import yaml

    limits = {"rpm": int(GATEWAY_ENV["KNOWCTL_QUOTA_RPM"]), "tpm": int(GATEWAY_ENV["KNOWCTL_QUOTA_TPM"])}
    models = {m: dict(limits) for m in ("gemini-2.5-flash", "gemini-embedding-001")}
    pool = [{"name": f"d{i}", "url": upstream, "models": models} for i in range(deployments)]
    env = {k: v for k, v in GATEWAY_ENV.items() if not k.startswith("KNOWCTL_QUOTA_")}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "pool.yaml"
        config.write_text(yaml.safe_dump({"upstreams": pool}))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "knowctl", "serve", "--port", str(port), "--store", store_url]
        with service(
            "gateway", argv, f"{url}/api/health", url, env={**env, "KNOWCTL_CONFIG": str(config)}
        ) as gw:
            yield gw


def baseline_app(
    store_url: str, upstream: str | None = None, round_trips: int = 0, client: str = "pipelined"
) -> contextlib.AbstractContextManager[Service]:
    """bench/baseline_app.py: the cache-hit baseline (its GET through ``client``), or with
    ``upstream`` the bare pass-through proxy making ``round_trips`` Redis round trips before
    each relayed call."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable,
        str(HERE / "baseline_app.py"),
        "--port",
        str(port),
        "--redis",
        store_url,
        "--client",
        client,
    ]
    if upstream is not None:
        argv += ["--upstream", upstream, "--round-trips", str(round_trips)]
    return service("baseline", argv, f"{url}/health", url)


def _wrk_command(
    url: str, concurrency: int, seconds: int, same_prompt: bool, shape: str = "generate"
) -> tuple[list[str], dict[str, str]]:
    """wrk's argv (a thread per 8 connections, at most 2) and environment for post.lua
    (``shape``: the body it posts, one of the shapes post.lua names)."""
    threads = 1 if concurrency < 8 else 2
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(HERE / "post.lua"),
        url,
    ]
    return argv, {**os.environ, "BENCH_SAME_PROMPT": "1" if same_prompt else "", "BENCH_SHAPE": shape}


def wrk(
    url: str,
    concurrency: int,
    duration: float,
    *,
    same_prompt: bool = False,
    pid: int | None = None,
    shape: str = "generate",
) -> dict[str, float]:
    """One bounded wrk run with bench/post.lua; requests/s and latency percentiles (µs), and
    with ``pid`` the CPU time that process spent per request (µs)."""
    cpu_before = cpu_seconds(pid) if pid else 0.0
    seconds = max(1, round(duration))
    argv, env = _wrk_command(url, concurrency, seconds, same_prompt, shape)
    out = subprocess.run(
        argv, capture_output=True, text=True, check=True, env=env, timeout=seconds + 30
    ).stdout
    line = next(li for li in out.splitlines() if li.startswith("RESULT "))
    result: dict[str, float] = json.loads(line[len("RESULT ") :])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = result["non_2xx"] + result["socket_errors"]
    if pid:
        result["cpu_us_per_request"] = (cpu_seconds(pid) - cpu_before) / max(1, result["requests"]) * 1e6
    return result


def wrk_background(
    url: str, concurrency: int, duration: float, *, same_prompt: bool = False
) -> subprocess.Popen[str]:
    argv, env = _wrk_command(url, concurrency, max(1, round(duration)), same_prompt)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def rss_mb(pid: int) -> float:
    """Resident set size (VmRSS) of ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far: per request, a figure that other load
    on the machine disturbs much less than throughput."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields), idle


def machine_state(sample_s: float = 1.0) -> dict[str, float]:
    """Load averages, and how busy the CPUs are right now (sampled while our own processes
    are idle): a busy machine makes every figure of the next case lower."""
    total0, idle0 = _cpu_times()
    time.sleep(sample_s)
    total1, idle1 = _cpu_times()
    busy = 1 - (idle1 - idle0) / max(1, total1 - total0)
    one, five, fifteen = os.getloadavg()
    return {"load1": one, "load5": five, "load15": fifteen, "cpu_busy": round(busy, 3)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
