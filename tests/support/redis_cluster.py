"""Real multi-process Redis set-ups on loopback, for tests: a 3-master Cluster and a Sentinel
group (one master, one replica, Sentinels watching them).

Everything runs from the Debian binaries on PATH (``redis-server``, ``redis-cli``,
``redis-sentinel``); nothing is persisted. Processes are started once per use and killed at
the end; ports are free loopback ports picked at start-up.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.net import LOOPBACK, free_port


def _binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not on PATH (Debian: apt-get install redis-server redis-sentinel)")
    return found


def _command(port: int, *args: str, timeout: float = 1.0) -> str:
    """One inline command to the server on ``port``; its raw RESP reply ('' on failure)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall((" ".join(args) + "\r\n").encode())
            reply = b""
            while True:
                data = sock.recv(65536)
                reply += data
                if not data or _complete(reply):
                    return reply.decode(errors="replace")
    except OSError:
        return ""


def _complete(reply: bytes) -> bool:
    # Enough RESP for the few commands used here: a bulk string is complete once its
    # announced length has arrived; anything else once it ends a line.
    if not reply.endswith(b"\r\n"):
        return False
    if reply.startswith(b"$"):
        head, _, rest = reply.partition(b"\r\n")
        return len(rest) >= int(head[1:]) + 2
    return True


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout}s")


@dataclass
class Node:
    """One redis-server (or redis-sentinel) process."""

    port: int
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(f"port {self.port} answering PING", lambda: _command(self.port, "PING").startswith("+PONG"), 10)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def command(self, *args: str) -> str:
        return _command(self.port, *args)


def _cluster_port() -> int:
    """A free port P with P + 10000 (its cluster bus) free too. Redis refuses ports above
    55535; both are picked below the kernel's ephemeral range (32768+), where free_port()
    and outgoing connections never land."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 22700)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((LOOPBACK, port))
                b.bind((LOOPBACK, port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


def _server_argv(port: int, workdir: Path, *extra: str) -> list[str]:
    return [
        _binary("redis-server"),
        "--port", str(port),
        "--bind", LOOPBACK,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--loglevel", "warning",
        *extra,
    ]  # fmt: skip


@dataclass
class RedisCluster:
    nodes: list[Node]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2/``: every master as a start-up node."""
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{n.port}" for n in self.nodes) + "/"

    def cluster_ok(self) -> bool:
        return all("cluster_state:ok" in n.command("CLUSTER", "INFO") for n in self.nodes)


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[RedisCluster]:
    """A Cluster of ``masters`` masters and no replicas, all slots assigned, state ok."""
    cli = _binary("redis-cli")
    with tempfile.TemporaryDirectory(prefix="knowctl-cluster-") as tmp:
        nodes: list[Node] = []
        try:
            for i in range(masters):
                port = _cluster_port()
                workdir = Path(tmp) / f"node{i}"
                workdir.mkdir()
                nodes.append(
                    Node(
                        port,
                        _server_argv(
                            port,
                            workdir,
                            "--cluster-enabled", "yes",
                            "--cluster-config-file", str(workdir / "nodes.conf"),
                            "--cluster-node-timeout", "2000",
                        ),
                    )
                )  # fmt: skip
                nodes[-1].start()
            subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"{LOOPBACK}:{n.port}" for n in nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=60,
            )
            cluster = RedisCluster(nodes)
            _wait("cluster_state:ok on every node", cluster.cluster_ok, 30)
            yield cluster
        finally:
            for node in nodes:
                node.kill()


@dataclass
class SentinelGroup:
    """One master, one replica, Sentinels watching them under ``service``."""

    master: Node
    replica: Node
    sentinels: list[Node]
    service: str = "knowctl"

    @property
    def url(self) -> str:
        return (
            "redis+sentinel://"
            + ",".join(f"{LOOPBACK}:{s.port}" for s in self.sentinels)
            + f"/{self.service}/0"
        )

    def replica_known(self) -> bool:
        for s in self.sentinels:
            reply = s.command("SENTINEL", "replicas", self.service)
            if f"\r\n{self.replica.port}\r\n" not in reply or "s_down" in reply or "disconnected" in reply:
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as the first answering Sentinel sees it now."""
        for s in self.sentinels:
            reply = s.command("SENTINEL", "get-master-addr-by-name", self.service)
            parts = reply.split("\r\n")
            if reply.startswith("*2") and len(parts) >= 5:
                return int(parts[4])
        return None


@contextlib.contextmanager
def sentinel_group(sentinels: int = 1) -> Iterator[SentinelGroup]:
    """Failover is tuned to take about a second: down-after 500 ms, quorum 1."""
    sentinel_bin = _binary("redis-sentinel")
    with tempfile.TemporaryDirectory(prefix="knowctl-sentinel-") as tmp:
        started: list[Node] = []
        try:
            m_port, r_port = free_port(), free_port()
            (Path(tmp) / "m").mkdir()
            (Path(tmp) / "r").mkdir()
            # Diskless sync starts after a 5 s delay by default (waiting for more replicas).
            master = Node(m_port, _server_argv(m_port, Path(tmp) / "m", "--repl-diskless-sync-delay", "0"))
            master.start()
            started.append(master)
            replica = Node(
                r_port, _server_argv(r_port, Path(tmp) / "r", "--replicaof", LOOPBACK, str(m_port))
            )
            replica.start()
            started.append(replica)
            _wait(
                "replica in sync",
                lambda: "master_link_status:up" in replica.command("INFO", "replication"),
                15,
            )
            group = SentinelGroup(master, replica, [])
            for i in range(sentinels):
                port = free_port()
                conf = Path(tmp) / f"sentinel{i}.conf"
                # Sentinel rewrites its config file, so each needs its own writable copy.
                conf.write_text(
                    f"port {port}\nbind {LOOPBACK}\ndir {tmp}\n"
                    f"sentinel monitor {group.service} {LOOPBACK} {m_port} 1\n"
                    f"sentinel down-after-milliseconds {group.service} 500\n"
                    f"sentinel failover-timeout {group.service} 5000\n"
                    f"sentinel parallel-syncs {group.service} 1\n"
                )
                node = Node(port, [sentinel_bin, str(conf), "--loglevel", "warning"])
                node.start()
                started.append(node)
                group.sentinels.append(node)
            _wait("sentinels to see the master", lambda: group.master_port() == m_port, 15)
            # A Sentinel that has not yet listed the replica (it learns replicas from the
            # master's INFO) answers a failover with NOGOODSLAVE.
            _wait("sentinels to know the replica", group.replica_known, 15)
            yield group
        finally:
            for node in started:
                node.kill()
