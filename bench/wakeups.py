"""What one hop between two processes costs on this machine: a one-byte TCP ping-pong over
loopback, both processes on one CPU or on two, back to back or after a pause.

Each hop the gateway adds (client -> gateway -> Redis -> gateway -> upstream -> gateway ->
client) wakes a process. On a virtual machine whose idle vCPUs halt, waking a process on the
other vCPU after a pause costs far more than on a busy machine; these figures say how much,
so that the stream case's latencies can be read against them.

    python bench/wakeups.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

PAUSES_MS = (0.0, 20.0)


def ping_pong(rounds: int, pause_ms: float, cpus: tuple[int, int] | None) -> float:
    """Median round trip in µs; ``cpus`` pins (parent, child), None lets the scheduler place."""
    server = socket.create_server(("127.0.0.1", 0))
    pid = os.fork()
    if pid == 0:  # the echoing child
        try:
            if cpus is not None:
                os.sched_setaffinity(0, {cpus[1]})
            conn, _ = server.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(64):
                conn.sendall(data)
        finally:
            os._exit(0)
    server_port = server.getsockname()[1]
    server.close()
    if cpus is not None:
        os.sched_setaffinity(0, {cpus[0]})
    times = []
    with socket.create_connection(("127.0.0.1", server_port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(rounds):
            started = time.perf_counter()
            sock.sendall(b"x")
            sock.recv(64)
            times.append(time.perf_counter() - started)
            if pause_ms:
                time.sleep(pause_ms / 1000)
    os.waitpid(pid, 0)
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    placements: list[tuple[str, tuple[int, int] | None]] = [("scheduler's choice", None)]
    if (os.cpu_count() or 1) >= 2:
        placements += [("same CPU", (0, 0)), ("two CPUs", (0, 1))]
    print(f"{'placement':<20} " + " ".join(f"{f'pause {p:g} ms':>14}" for p in PAUSES_MS))
    for name, cpus in placements:
        cells = [f"{ping_pong(args.rounds, pause, cpus):11.0f} µs" for pause in PAUSES_MS]
        print(f"{name:<20} " + " ".join(cells))


if __name__ == "__main__":
    main()
