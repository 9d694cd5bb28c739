"""A real Docker engine for tests, and the CI rule for missing tools.

``docker_engine()`` uses an engine that already answers (``DOCKER_HOST`` or the default
socket); otherwise, as root with ``dockerd`` on PATH, it starts a private one:
``--iptables=false --bridge=none`` (no Docker networks here; containers use
``network_mode=none``), its own data root and socket under a short /tmp folder, and
stops it again. Nothing is ever pulled: tests import a base image they build themselves.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """A tool or service a test needs is missing: a failure under CI, a skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: .ci/install-deploy-tools should have installed it)")
    pytest.skip(f"{reason}; run .ci/install-deploy-tools .venv")


def need_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        for folder in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
            candidate = Path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        unavailable(f"{name} is not installed")
    return found


def _answers(host: str | None) -> bool:
    import docker
    from docker.errors import DockerException

    env = {"DOCKER_HOST": host} if host else {}
    try:
        cli = docker.DockerClient.from_env(environment={**os.environ, **env}, timeout=5)
        cli.ping()
        cli.close()
        return True
    except (DockerException, OSError):
        return False


@contextlib.contextmanager
def docker_engine() -> Iterator[str]:
    """Yields a DOCKER_HOST value for a working engine."""
    if not sdk_installed():
        unavailable("the Docker SDK (pip package docker) is not installed")
    existing = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if _answers(existing):
        yield existing
        return
    dockerd = need_tool("dockerd")
    if os.geteuid() != 0:
        unavailable("no Docker engine answers and starting dockerd needs root")
    # A short path: unix socket paths are limited to about 100 bytes.
    root = Path(tempfile.mkdtemp(prefix="kd", dir="/tmp"))
    host = f"unix://{root}/docker.sock"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            dockerd,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            f"--data-root={root}/data",
            f"--exec-root={root}/exec",
            f"--pidfile={root}/docker.pid",
            f"--host={host}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not _answers(host):
            if proc.poll() is not None:
                pytest.fail(
                    f"dockerd exited with {proc.returncode}: {(root / 'dockerd.log').read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"dockerd did not answer within 60 s: {(root / 'dockerd.log').read_text()[-2000:]}"
                )
            time.sleep(0.2)
        yield host
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def sdk_installed() -> bool:
    try:
        import docker  # noqa: F401
    except ImportError:
        return False
    return True


def busybox_rootfs_tar(dest: Path) -> Path:
    """A tarball of a tiny root filesystem: a static busybox and a few applet links."""
    busybox = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if Path(p).is_file()), None)
    if busybox is None:
        unavailable("busybox (Debian busybox-static) is not installed")
    out = dest / "rootfs.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "true", "sleep", "cat", "echo", "ls", "wget"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        tmp = tarfile.TarInfo("tmp")
        tmp.type = tarfile.DIRTYPE
        tmp.mode = 0o1777
        tar.addfile(tmp)
    return out
