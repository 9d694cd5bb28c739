"""Profile the gateway under one bench load with py-spy, and print where the time goes.

Starts the same redis-server, simulator and gateway as bench/run.py, drives the hit or miss
path with wrk, records the gateway with ``py-spy record -f raw`` (collapsed stacks), and
prints the functions with the most samples: self time, and inclusive time of knowctl's own
functions. The raw file stays under bench/results/profiles/ for flame graphs.

    python bench/profile.py miss [--duration 10] [--concurrency 32] [--pool 3]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from clients import generate_body
from harness import GENERATE, gateway, pool_gateway, redis_server, simulator, wrk, wrk_background

HERE = Path(__file__).resolve().parent


def summarize(raw: Path, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            if "knowctl" in frame or "redis" in frame or "uvicorn" in frame:
                inclusive[frame] += n
    print(f"\n{total} samples\n\nself time:")
    for frame, n in own.most_common(top):
        print(f"  {n / total:6.1%}  {frame}")
    print("\ninclusive (knowctl, redis, uvicorn frames):")
    for frame, n in inclusive.most_common(top):
        print(f"  {n / total:6.1%}  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", choices=("hit", "miss"))
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--pool", type=int, default=0, help="a pool of this many deployments (bench/harness.py)"
    )
    args = parser.parse_args()
    if shutil.which("py-spy") is None and not Path(sys.executable).with_name("py-spy").exists():
        sys.exit("profile needs py-spy (pip install py-spy)")
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out_dir = HERE / "results" / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{args.path}-{time.strftime('%Y%m%dT%H%M%S')}.txt"
    same = args.path == "hit"
    with (
        redis_server() as store,
        simulator() as sim,
        pool_gateway(sim.url, store, args.pool) if args.pool else gateway(sim.url, store) as gw,
    ):
        if same:
            httpx.post(gw.url + GENERATE, content=generate_body(), timeout=10)
        wrk(gw.url + GENERATE, args.concurrency, 1, same_prompt=same)  # warm up
        load = wrk_background(gw.url + GENERATE, args.concurrency, args.duration + 2, same_prompt=same)
        time.sleep(1)
        subprocess.run(
            [
                pyspy,
                "record",
                "-f",
                "raw",
                "-r",
                "250",
                "-d",
                str(args.duration),
                "-p",
                str(gw.pid),
                "-o",
                str(raw),
                "--nonblocking",
            ],
            check=True,
            capture_output=True,
            timeout=args.duration + 60,
        )
        out, _ = load.communicate(timeout=args.duration + 30)
        print(next((li for li in out.splitlines() if li.startswith("RESULT ")), "no wrk result"))
    summarize(raw, args.top)
    print(f"\nraw stacks: {raw}")


if __name__ == "__main__":
    main()
