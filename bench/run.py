"""knowctl bench: every performance case of the gateway beside its baseline, in one run.

Starts a private redis-server, ``knowctl simulate`` and ``knowctl serve`` (per-user limits and
provider quota on Redis, generous limits) on free loopback ports, and runs each case with
the same load generator for gateway and baseline:

  hit      cache hit (L1) vs a bare ASGI app doing one Redis GET (bench/baseline_app.py: redis-py's
           pool, then knowctl's pipelined connection), wrk c32
  miss     distinct prompts (quota admission, cache write) vs the simulator directly, wrk c32 and c1
  slow     simulator latency 200 ms, wrk c256, gateway vs direct
  stream   time to the first SSE event through the gateway vs direct (asyncio client), and through
           a bare pass-through proxy (the floor on this machine)
  surfaces the other call families, each vs the simulator directly, wrk c32: Interactions API
           create (miss; hit of a store:false interaction), OpenAI-compatible chat (miss), and
           a batchEmbedContents of 100 texts of which 90 were embedded before
  files    a 128 MiB resumable upload in 8 MiB chunks through the gateway vs the simulator
           direct: MB/s, the gateway's CPU per MiB, its RSS growth
  live     Live API sessions (WebSocket) through the gateway vs the simulator direct: time to
           open one and a text turn's round trip
  pool     a pool of three deployments beside one deployment (the same simulator behind
           each): cache hit and miss, wrk c32, CPU per request of each
  ops      /api/health, ready, metrics, quota/stats, cache/stats while wrk loads the gateway
  memory   idle RSS, and RSS with 10,000 L1 entries
  cli      `knowctl --help` wall time (hyperfine when installed)

Prints a table (case, baseline, gateway, ratio, p50, p99, target) and saves it to
bench/results/<stamp>.json and .md. Before each case it prints the load average and how busy
the CPUs are, and warns when something else is using them.

    python bench/run.py [--duration 10] [--cases hit miss ...]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from clients import MIB, fill, generate_body, live_turns, probe, ttfb, ttfb_pair, upload_mb_s
from harness import (
    EMBED_BATCH,
    GENERATE,
    INTERACTIONS,
    OPENAI_CHAT,
    STREAM,
    Service,
    baseline_app,
    configure_simulator,
    cpu_seconds,
    gateway,
    machine_state,
    percentile,
    pool_gateway,
    redis_command,
    redis_server,
    rss_mb,
    simulator,
    wrk,
    wrk_background,
)

HERE = Path(__file__).resolve().parent
CASES = ("hit", "miss", "slow", "stream", "surfaces", "files", "live", "pool", "ops", "memory", "cli")
BUSY_WARNING = 0.25  # CPU busy fraction, sampled while our processes idle
OPS = ("/api/health", "/api/ready", "/api/metrics", "/api/quota/stats", "/api/cache/stats")
OPS_TARGET_MS = {"/api/health": 10, "/api/ready": 10, "/api/metrics": 50}
SAME_PROMPT = "benchmark prompt that is always the same"  # bench/post.lua's fixed prompt


@dataclass
class Row:
    case: str
    unit: str  # "req/s", "ms" or "MB"
    baseline: float | None
    gateway: float
    p50: str = ""  # "baseline / gateway" in ms
    p99: str = ""
    target: str = ""
    met: bool | None = None
    cpu_us: float | None = None  # the gateway's CPU time per request
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return None if not self.baseline else self.gateway / self.baseline


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def pair(a: float, b: float) -> str:
    return f"{a:.2f} / {b:.2f}"


def _p50(times: dict[str, list[float]]) -> float:
    return percentile(times["first_event"], 50) * 1000


def _p99(times: dict[str, list[float]]) -> float:
    return percentile(times["first_event"], 99) * 1000


def ttfb_row(case: str, direct: dict[str, list[float]], via: dict[str, list[float]], **kw: Any) -> Row:
    """A first-event row: direct as the baseline, p50 and p99 in ms."""
    d50, g50 = _p50(direct), _p50(via)
    return Row(case, "ms", d50, g50, p50=pair(d50, g50), p99=pair(_p99(direct), _p99(via)), **kw)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.duration: float = args.duration
        self.rows: list[Row] = []
        self.states: dict[str, dict[str, float]] = {}

    def state(self, case: str) -> None:
        s = machine_state()
        self.states[case] = s
        warn = "  WARNING: the machine is busy, figures will be low" if s["cpu_busy"] > BUSY_WARNING else ""
        print(
            f"[{case}] load {s['load1']:.2f} {s['load5']:.2f} {s['load15']:.2f}, "
            f"cpu busy {s['cpu_busy']:.0%} before the case{warn}",
            flush=True,
        )

    def pair_wrk(
        self,
        label: str,
        base: Service,
        gw: Service,
        conc: int,
        *,
        same: bool = False,
        duration: float | None = None,
        path: str = GENERATE,
        shape: str = "generate",
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Baseline and gateway under the same wrk load, each warmed up first."""
        seconds = duration or self.duration
        wrk(base.url + path, conc, 1, same_prompt=same, shape=shape)
        wrk(gw.url + path, conc, 1, same_prompt=same, shape=shape)
        b = wrk(base.url + path, conc, seconds, same_prompt=same, pid=base.pid, shape=shape)
        g = wrk(gw.url + path, conc, seconds, same_prompt=same, pid=gw.pid, shape=shape)
        for name, r in (("baseline", b), ("gateway", g)):
            print(
                f"  {label} {name}: {r['rps']:.0f} req/s, p50 {ms(r['p50_us'])} ms, "
                f"p99 {ms(r['p99_us'])} ms, errors {r['errors']:.0f}, "
                f"{r['cpu_us_per_request']:.0f} µs CPU/request",
                flush=True,
            )
        return b, g

    def throughput_row(self, case: str, base: dict[str, float], gw: dict[str, float], target: float) -> Row:
        row = Row(
            case,
            "req/s",
            base["rps"],
            gw["rps"],
            p50=pair(base["p50_us"] / 1000, gw["p50_us"] / 1000),
            p99=pair(base["p99_us"] / 1000, gw["p99_us"] / 1000),
            target=f">= {target:.0%}",
            extra={"baseline": base, "gateway": gw, "gateway_cpu_us_per_request": gw["cpu_us_per_request"]},
        )
        row.cpu_us = gw["cpu_us_per_request"]
        row.met = row.ratio is not None and row.ratio >= target and gw["errors"] == 0
        return row

    # --- cases -----------------------------------------------------------------------------
    def hit(self, sim_url: str, store: str) -> None:
        # Two bare baselines: the GET through redis-py's pool (the standard client, what the
        # issue's figures were set against) and through knowctl's own pipelined connection.
        with (
            gateway(sim_url, store) as gw,
            baseline_app(store, client="redis-py") as pooled,
            baseline_app(store) as pipelined,
        ):
            # The gateway caches the answer; the baselines answer those very bytes from Redis.
            answer = httpx.post(gw.url + GENERATE, content=generate_body(SAME_PROMPT), timeout=10)
            answer.raise_for_status()
            redis_command(store, "SET", "bench:answer", answer.content)
            self.state("hit")
            for base, client in ((pooled, "redis-py pool"), (pipelined, "pipelined")):
                b, g = self.pair_wrk(f"hit c32, baseline {client}", base, gw, 32, same=True)
                self.rows.append(
                    self.throughput_row(f"hit L1 c32 (vs bare ASGI + 1 Redis GET, {client})", b, g, 0.5)
                )

    def miss(self, sim: Service, store: str) -> None:
        with gateway(sim.url, store) as gw:
            self.state("miss")
            b, g = self.pair_wrk("miss c32", sim, gw, 32)
            self.rows.append(self.throughput_row("miss c32 (vs simulator direct)", b, g, 0.15))
            b, g = self.pair_wrk("miss c1", sim, gw, 1)
            self.rows.append(self.throughput_row("miss c1 (vs simulator direct)", b, g, 0.0))
            added50 = (g["p50_us"] - b["p50_us"]) / 1000
            added99 = (g["p99_us"] - b["p99_us"]) / 1000
            self.rows.append(
                Row(
                    "miss c1 added latency p50 / p99 (ms)",
                    "ms",
                    None,
                    added50,
                    p50=f"+{added50:.2f}",
                    p99=f"+{added99:.2f}",
                    target="< 1 / < 3 ms",
                    met=added50 < 1 and added99 < 3,
                )
            )

    def pool(self, sim: Service, store: str) -> None:
        """Admission over three lanes (one store script over all three) beside one: the CPU
        per request of a hit and of a miss, one deployment as the baseline."""
        with gateway(sim.url, store) as one, pool_gateway(sim.url, store) as three:
            for gw in (one, three):  # each caches the fixed prompt's answer first
                httpx.post(
                    gw.url + GENERATE, content=generate_body(SAME_PROMPT), timeout=10
                ).raise_for_status()
            self.state("pool")
            for label, same in (("hit L1", True), ("miss", False)):
                b, g = self.pair_wrk(f"pool {label} c32", one, three, 32, same=same)
                row = self.throughput_row(f"pool of 3, {label} c32 (vs one deployment)", b, g, 0.9)
                row.extra["baseline_cpu_us_per_request"] = b["cpu_us_per_request"]
                self.rows.append(row)

    def slow(self, sim: Service, store: str) -> None:
        configure_simulator(sim, latency_ms=200)
        try:
            with gateway(sim.url, store) as gw:
                self.state("slow")
                b, g = self.pair_wrk("slow c256", sim, gw, 256)
                self.rows.append(self.throughput_row("sim 200 ms, c256 (vs direct)", b, g, 0.95))
        finally:
            configure_simulator(sim, latency_ms=0)

    def stream(self, sim_url: str, store: str, sim: Any, streams: int) -> None:
        # Chunks 20 ms apart, so the first event is on the wire well before the rest.
        configure_simulator(sim, chunk_delay_ms=20, chunks=4)
        try:
            with gateway(sim_url, store) as gw:
                self.state("stream")
                asyncio.run(ttfb(sim_url, STREAM, 50, 4))  # warm-up
                asyncio.run(ttfb(gw.url, STREAM, 50, 4))
                for conc in (1, 16):
                    d, g = self.pair_ttfb(f"c{conc}", sim_url, gw.url, streams, conc)
                    errors = d["errors"][0] + g["errors"][0]
                    self.rows.append(
                        ttfb_row(
                            f"stream TTFB, first SSE event, c{conc} ({streams} streams)",
                            d,
                            g,
                            target="+ < 1 ms" if conc == 1 else "",
                            met=(_p50(g) - _p50(d) < 1 and errors == 0) if conc == 1 else None,
                            extra={
                                "direct_head_p50_ms": percentile(d["head"], 50) * 1000,
                                "gateway_head_p50_ms": percentile(g["head"], 50) * 1000,
                                "errors": errors,
                            },
                        )
                    )
            # The floor under that target on this machine: a bare pass-through proxy on the same
            # server and clients, with no store round trip and with the one the gateway makes.
            for trips in (0, 1):
                with baseline_app(store, upstream=sim_url, round_trips=trips) as floor:
                    asyncio.run(ttfb(floor.url, STREAM, 50, 4))
                    d, f = self.pair_ttfb(f"floor, {trips} round trips", sim_url, floor.url, streams, 1)
                    self.rows.append(
                        ttfb_row(
                            f"stream floor: bare pass-through proxy, {trips} Redis round trips, c1",
                            d,
                            f,
                            target="reported",
                        )
                    )
            # The same with no pause between a stream's events, so none between streams
            # either: what the gateway adds when the machine does not idle between calls.
            configure_simulator(sim, chunk_delay_ms=0)
            with gateway(sim_url, store) as gw:
                asyncio.run(ttfb(gw.url, STREAM, 50, 4))
                d, g = self.pair_ttfb("back to back", sim_url, gw.url, streams, 1)
                self.rows.append(
                    ttfb_row(
                        f"stream TTFB, back to back (no pause between events), c1 ({streams} streams)",
                        d,
                        g,
                        target="reported",
                    )
                )
        finally:
            configure_simulator(sim, chunk_delay_ms=0)

    @staticmethod
    def pair_ttfb(
        label: str, direct_url: str, via_url: str, streams: int, conc: int
    ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """Direct and through ``via_url``, in alternating batches on connections kept open
        (so that a drift of the machine's state touches both alike): the times of each
        stream's head and first event."""
        d, g = asyncio.run(ttfb_pair(direct_url, via_url, STREAM, streams, conc))
        print(
            f"  stream {label}: first event direct p50 {_p50(d):.2f} ms p99 {_p99(d):.2f}, "
            f"through p50 {_p50(g):.2f} ms p99 {_p99(g):.2f}",
            flush=True,
        )
        return d, g

    def surfaces(self, sim: Service, store: str) -> None:
        with gateway(sim.url, store) as gw:
            self.state("surfaces")
            for label, path, shape, same, target in (
                ("interactions create miss c32", INTERACTIONS, "interaction", False, 0.15),
                ("interactions create hit (store:false) c32", INTERACTIONS, "interaction", True, 0.5),
                ("openai chat miss c32", OPENAI_CHAT, "openai", False, 0.15),
                ("embed batch of 100, 90 known, c32", EMBED_BATCH, "embed90", False, 0.5),
            ):
                b, g = self.pair_wrk(label, sim, gw, 32, same=same, path=path, shape=shape)
                self.rows.append(self.throughput_row(f"{label} (vs simulator direct)", b, g, target))

    def files(self, sim: Service, store: str) -> None:
        """A resumable upload streamed through, in the SDK's 8 MiB chunks: throughput beside
        the simulator direct, the gateway's CPU per MiB, and its RSS before and at the peak."""
        size, rounds = 128 * MIB, 3
        with gateway(sim.url, store) as gw:
            self.state("files")
            upload_mb_s(sim.url, MIB)  # warm up both
            upload_mb_s(gw.url, MIB)
            direct = max(upload_mb_s(sim.url, size) for _ in range(rounds))
            cpu_before, rss_before = cpu_seconds(gw.pid), rss_mb(gw.pid)
            peak = [rss_before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.02):
                    peak[0] = max(peak[0], rss_mb(gw.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                through = max(upload_mb_s(gw.url, size) for _ in range(rounds))
            finally:
                stop.set()
                sampler.join()
            cpu_per_mib = (cpu_seconds(gw.pid) - cpu_before) * 1e6 / (rounds * size / MIB)
            print(
                f"  files: {size // MIB} MiB upload, direct {direct:.0f} MB/s, through the gateway "
                f"{through:.0f} MB/s, {cpu_per_mib:.0f} µs CPU/MiB, RSS {rss_before:.0f} -> peak {peak[0]:.0f} MB",
                flush=True,
            )
            self.rows.append(
                Row(
                    f"files upload {size // MIB} MiB, 8 MiB chunks (MB/s, vs simulator direct)",
                    "MB/s",
                    direct,
                    through,
                    target=">= 50%",
                    met=through >= 0.5 * direct,
                    extra={"gateway_cpu_us_per_mib": cpu_per_mib, "rss_mb": [rss_before, peak[0]]},
                )
            )
            self.rows.append(
                Row(
                    f"gateway RSS growth during {size // MIB} MiB uploads (MB)",
                    "MB",
                    None,
                    peak[0] - rss_before,
                    target="< 48 MB",
                    met=peak[0] - rss_before < 48,
                )
            )

    def live(self, sim: Service, store: str) -> None:
        """Live API sessions through the gateway beside the simulator direct: the time to open
        one (connect, setup, setupComplete) and a text turn's round trip, p50 and p99."""
        sessions, turns = 20, 25
        with gateway(sim.url, store) as gw:
            self.state("live")
            asyncio.run(live_turns(sim.url, 2, 2))  # warm up both
            asyncio.run(live_turns(gw.url, 2, 2))
            d_open, d_turn = asyncio.run(live_turns(sim.url, sessions, turns))
            g_open, g_turn = asyncio.run(live_turns(gw.url, sessions, turns))
            for label, d, g, budget in (
                (f"live session open ({sessions} sessions)", d_open, g_open, 5.0),
                (f"live text turn ({sessions * turns} turns)", d_turn, g_turn, 1.0),
            ):
                d50, g50 = percentile(d, 50) * 1000, percentile(g, 50) * 1000
                d99, g99 = percentile(d, 99) * 1000, percentile(g, 99) * 1000
                print(f"  {label}: direct p50 {d50:.2f} ms, gateway p50 {g50:.2f} ms", flush=True)
                self.rows.append(
                    Row(
                        f"{label} (ms, vs simulator direct)",
                        "ms",
                        d50,
                        g50,
                        p50=pair(d50, g50),
                        p99=pair(d99, g99),
                        target=f"+ < {budget:g} ms",
                        met=g50 - d50 < budget,
                    )
                )

    def ops(self, sim_url: str, store: str) -> None:
        with gateway(sim_url, store) as gw:
            self.state("ops")
            asyncio.run(fill(gw.url, GENERATE, 200))  # some metrics, stats and entries to report
            idle = asyncio.run(probe(gw.url, list(OPS), 30))
            seconds = max(6.0, self.duration)
            load = wrk_background(gw.url + GENERATE, 32, seconds)
            try:
                time.sleep(1.0)  # let the load build up
                rounds = max(20, int((seconds - 2) / 0.12))
                busy = asyncio.run(probe(gw.url, list(OPS), rounds, pause_s=0.02))
            finally:
                out, _ = load.communicate(timeout=seconds + 30)
            line = next((li for li in out.splitlines() if li.startswith("RESULT ")), None)
            background = json.loads(line[len("RESULT ") :]) if line else {}
            rps = background.get("requests", 0) / max(1, background.get("duration_us", 1)) * 1e6
            print(f"  ops: background load {rps:.0f} req/s (miss path, c32)", flush=True)
            for path in OPS:
                i50, i99 = percentile(idle[path], 50) * 1000, percentile(idle[path], 99) * 1000
                b50, b99 = percentile(busy[path], 50) * 1000, percentile(busy[path], 99) * 1000
                limit = OPS_TARGET_MS.get(path, 20)
                self.rows.append(
                    Row(
                        f"{path} under load (idle -> loaded)",
                        "ms",
                        i50,
                        b50,
                        p50=pair(i50, b50),
                        p99=pair(i99, b99),
                        target=f"< {limit} ms",
                        met=b99 < limit,
                        extra={"samples": len(busy[path]), "load_rps": rps},
                    )
                )

    def memory(self, sim_url: str, store: str) -> None:
        with gateway(sim_url, store) as gw, baseline_app(store) as base:
            self.state("memory")
            time.sleep(1.0)
            idle, base_idle = rss_mb(gw.pid), rss_mb(base.pid)
            self.rows.append(
                Row(
                    "idle RSS (MB; baseline: bare ASGI app)",
                    "MB",
                    base_idle,
                    idle,
                    target="< 80 MB",
                    met=idle < 80,
                )
            )
            answered = asyncio.run(fill(gw.url, GENERATE, 10_000))
            entries = httpx.get(gw.url + "/api/cache/stats", timeout=10).json()["layers"]["l1"]["entries"]
            full = rss_mb(gw.pid)
            print(
                f"  memory: {answered} answers, {entries} L1 entries, RSS {idle:.1f} -> {full:.1f} MB",
                flush=True,
            )
            self.rows.append(
                Row(
                    f"RSS with {entries} L1 entries (MB; baseline: idle)",
                    "MB",
                    idle,
                    full,
                    target="reported",
                    extra={"l1_entries": entries},
                )
            )

    def cli(self) -> None:
        self.state("cli")
        knowctl = str(Path(sys.executable).with_name("knowctl"))
        base = self._wall([sys.executable, "-c", "pass"])
        gw = self._wall([knowctl, "--help"])
        self.rows.append(
            Row(
                "`knowctl --help` wall (ms; baseline: python -c pass)",
                "ms",
                base["median"],
                gw["median"],
                p50=pair(base["median"], gw["median"]),
                p99=pair(base["max"], gw["max"]),
                target="< 300 ms",
                met=gw["max"] < 300,
                extra={"baseline": base, "gateway": gw},
            )
        )

    @staticmethod
    def _wall(argv: list[str], runs: int = 15) -> dict[str, Any]:
        if shutil.which("hyperfine"):
            out = subprocess.run(
                [
                    "hyperfine",
                    "--warmup",
                    "2",
                    "--runs",
                    str(runs),
                    "--export-json",
                    "/dev/stdout",
                    "--style",
                    "none",
                    " ".join(argv),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            ).stdout
            times = [t * 1000 for t in json.loads(out[out.index("{") :])["results"][0]["times"]]
            tool = "hyperfine"
        else:
            times = []
            for i in range(runs + 2):
                started = time.perf_counter()
                subprocess.run(
                    argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=30
                )
                if i >= 2:  # the first runs warm the page cache
                    times.append((time.perf_counter() - started) * 1000)
            tool = "subprocess"
        return {"median": statistics.median(times), "min": min(times), "max": max(times), "tool": tool}


# --- report --------------------------------------------------------------------------------------
def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if unit == "req/s" else f"{value:,.2f}"


def table(rows: list[Row]) -> list[list[str]]:
    out = [
        [
            "case",
            "unit",
            "baseline",
            "gateway",
            "ratio",
            "p50 ms (base / gw)",
            "p99 ms (base / gw)",
            "target",
            "met",
            "gw CPU µs/req",
        ]
    ]
    for r in rows:
        ratio = (
            f"{r.ratio:.1%}"
            if r.ratio is not None and r.unit == "req/s"
            else (f"{r.ratio:.2f}x" if r.ratio is not None else "-")
        )
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        out.append(
            [
                r.case,
                r.unit,
                fmt(r.baseline, r.unit),
                fmt(r.gateway, r.unit),
                ratio,
                r.p50 or "-",
                r.p99 or "-",
                r.target or "-",
                met,
                "-" if r.cpu_us is None else f"{r.cpu_us:.0f}",
            ]
        )
    return out


def print_table(cells: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def markdown(cells: list[list[str]], header: str) -> str:
    lines = [header, "", "| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells[1:]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--streams", type=int, default=500, help="streams per TTFB measurement")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--no-save", action="store_true", help="print only (for quick checks)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench needs wrk: apt-get install wrk")

    bench = Bench(args)
    started = machine_state()
    runs: dict[str, Callable[[], None]] = {}
    with redis_server() as store, simulator() as sim:
        runs = {
            "hit": lambda: bench.hit(sim.url, store),
            "miss": lambda: bench.miss(sim, store),
            "slow": lambda: bench.slow(sim, store),
            "stream": lambda: bench.stream(sim.url, store, sim, args.streams),
            "surfaces": lambda: bench.surfaces(sim, store),
            "pool": lambda: bench.pool(sim, store),
            "files": lambda: bench.files(sim, store),
            "live": lambda: bench.live(sim, store),
            "ops": lambda: bench.ops(sim.url, store),
            "memory": lambda: bench.memory(sim.url, store),
            "cli": bench.cli,
        }
        for case in CASES:
            if case in args.cases:
                redis_command(store, "FLUSHALL")  # every case starts from an empty store
                runs[case]()

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    header = (
        f"knowctl bench {stamp}: {os.cpu_count()} cores, {platform.platform()}, "
        f"{args.duration:g} s per wrk run; load before: {started['load1']:.2f} "
        f"(cpu busy {started['cpu_busy']:.0%}), after: {os.getloadavg()[0]:.2f}"
    )
    cells = table(bench.rows)
    print("\n" + header)
    print_table(cells)
    if args.no_save:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "when": stamp,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": sys.version,
        "duration_s": args.duration,
        "machine_before": started,
        "machine_per_case": bench.states,
        "rows": [{**asdict(r), "ratio": r.ratio} for r in bench.rows],
    }
    (args.out / f"{stamp}.json").write_text(json.dumps(record, indent=2))
    (args.out / f"{stamp}.md").write_text(markdown(cells, header))
    print(f"saved bench/results/{stamp}.json and .md")


if __name__ == "__main__":
    main()
