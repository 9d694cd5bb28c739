"""Gateway versus simulator, side by side in one run.

Starts ``knowctl simulate`` and ``knowctl serve --upstream <simulator>`` on free loopback
ports, then drives the same wrk load (distinct prompts, generateContent) first straight at the
simulator and then through the gateway, at each concurrency. Prints requests/s, p50 and p99
per case, and the gateway's throughput ratio and added latency; saves the figures as JSON
under bench/results/.

    python bench/run.py [--duration 10] [--concurrency 32 1] [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
PATH = "/v1beta/models/gemini-2.5-flash:generateContent"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def knowctl(*args: str, ready: str) -> Iterator[None]:
    env = {**os.environ, "NO_GCE_CHECK": "True", "KNOWCTL_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "knowctl", *args], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(ready, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"knowctl {' '.join(args)} did not start") from None
                time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def wrk(url: str, concurrency: int, duration: float) -> dict[str, float]:
    threads = 1 if concurrency < 8 else 2
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
         "-s", str(HERE / "post.lua"), url],
        capture_output=True, text=True, check=True,
    ).stdout
    line = next(li for li in out.splitlines() if li.startswith("RESULT "))
    result: dict[str, float] = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per case")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--latency-ms", type=float, default=0.0, help="simulator latency")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench needs wrk: apt-get install wrk")

    sim_port, gw_port = free_port(), free_port()
    sim = f"http://127.0.0.1:{sim_port}"
    gateway = f"http://127.0.0.1:{gw_port}"
    rows = []
    with knowctl("simulate", "--port", str(sim_port), "--latency-ms", str(args.latency_ms),
                 ready=f"{sim}/_simulator/stats"), \
         knowctl("serve", "--port", str(gw_port), "--upstream", sim, ready=f"{gateway}/api/health"):
        for concurrency in args.concurrency:
            wrk(sim + PATH, concurrency, 1)  # warm both up: connection pools, caches
            wrk(gateway + PATH, concurrency, 1)
            direct = wrk(sim + PATH, concurrency, args.duration)
            through = wrk(gateway + PATH, concurrency, args.duration)
            rows.append({"concurrency": concurrency, "direct": direct, "gateway": through})

    print(f"\nknowctl bench: generateContent, distinct prompts, simulator latency {args.latency_ms} ms, "
          f"{args.duration:g} s per case, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    header = f"{'conc':>4}  {'case':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        for case in ("direct", "gateway"):
            r = row[case]
            errors = int(r["non_2xx"] + r["socket_errors"])
            print(f"{row['concurrency']:>4}  {case:<8} {r['rps']:>9.0f} {r['p50_us'] / 1000:>8.2f} "
                  f"{r['p99_us'] / 1000:>8.2f} {errors:>6}")
        ratio = row["gateway"]["rps"] / row["direct"]["rps"]
        added_p50 = (row["gateway"]["p50_us"] - row["direct"]["p50_us"]) / 1000
        added_p99 = (row["gateway"]["p99_us"] - row["direct"]["p99_us"]) / 1000
        row["ratio"] = ratio
        print(f"{'':>4}  gateway/direct throughput {ratio:.1%}, added p50 {added_p50:+.2f} ms, "
              f"p99 {added_p99:+.2f} ms")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    record = {"when": stamp, "machine": platform.platform(), "cpus": os.cpu_count(),
              "loadavg_before": os.getloadavg(), "simulator_latency_ms": args.latency_ms,
              "duration_s": args.duration, "rows": rows}
    path = args.out / f"overhead-{stamp}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"saved {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main()
