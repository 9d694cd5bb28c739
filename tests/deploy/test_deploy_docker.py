"""knowctl deploy build / status against a real Docker engine.

Nothing can be pulled here, so the build context is based on an image the test imports
from a tiny root filesystem it makes (a static busybox); RUN steps use network none. The
real Dockerfile is checked by hadolint in test_deploy_tools.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.test_deploy_render import deploy
from tests.support.docker_engine import busybox_rootfs_tar, docker_engine, sdk_installed, unavailable

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def engine() -> Iterator[str]:
    with docker_engine() as host:
        yield host


@pytest.fixture(scope="module")
def client(engine: str) -> Iterator[Any]:
    import docker

    cli = docker.DockerClient(base_url=engine, timeout=60)
    yield cli
    cli.close()


@pytest.fixture(scope="module")
def base_image(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tar = busybox_rootfs_tar(tmp_path_factory.mktemp("rootfs"))
    name = f"knowctl-test-base-{uuid.uuid4().hex[:8]}"
    client.api.import_image_from_file(str(tar), repository=name, tag="1")
    yield f"{name}:1"
    client.images.remove(f"{name}:1", force=True)


def test_build_streams_progress_and_tags_the_image(
    engine: str, client: Any, base_image: str, tmp_path: Path
) -> None:
    (tmp_path / "hello.txt").write_text("hello\n")
    (tmp_path / "Dockerfile.test").write_text(
        f'FROM {base_image}\nARG GREETING=none\nLABEL org.knowctl.greeting="$GREETING"\n'
        "COPY hello.txt /hello.txt\n"
        'RUN ["/bin/sh", "-c", "cat /hello.txt > /copied.txt"]\n'
        'USER 1000:1000\nCMD ["/bin/cat", "/copied.txt"]\n'
    )
    tag = f"knowctl-test-build:{uuid.uuid4().hex[:8]}"
    result = deploy(
        "build",
        "--context",
        str(tmp_path),
        "--file",
        "Dockerfile.test",
        "--tag",
        tag,
        "--build-arg",
        "GREETING=hi",
        "--network",
        "none",
        env={"DOCKER_HOST": engine},
    )
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Step 1/" in result.stdout or "FROM" in result.stdout  # streamed progress
        assert f"built {tag}" in result.stdout
        image = client.images.get(tag)
        assert image.labels["org.knowctl.greeting"] == "hi"
        assert image.attrs["Config"]["User"] == "1000:1000"
    finally:
        client.images.remove(tag, force=True)


def test_build_failure_exits_1(engine: str, base_image: str, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {base_image}\nCOPY missing.txt /\n")
    result = deploy(
        "build", "--context", str(tmp_path), "--tag", "knowctl-test-broken:1", env={"DOCKER_HOST": engine}
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "build failed" in result.stderr


def test_build_without_a_dockerfile_is_a_usage_error(tmp_path: Path) -> None:
    result = deploy("build", "--context", str(tmp_path))
    assert result.returncode == 2 and "no Dockerfile" in result.stderr


def _wait_healthy(container: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if container.attrs["State"].get("Health", {}).get("Status") == "healthy":
            return
        time.sleep(0.3)
    raise AssertionError(f"container never became healthy: {container.attrs['State']}")


def test_status_lists_the_compose_projects_containers(engine: str, client: Any, base_image: str) -> None:
    project = f"kt{uuid.uuid4().hex[:8]}"
    started = []
    try:
        for service, number, command in (
            ("gateway", "1", ["sleep", "300"]),
            ("redis", "1", ["sleep", "300"]),
        ):
            started.append(
                client.containers.run(
                    base_image,
                    command,
                    name=f"{project}-{service}-{number}",
                    detach=True,
                    network_mode="none",
                    labels={
                        "com.docker.compose.project": project,
                        "com.docker.compose.service": service,
                        "com.docker.compose.container-number": number,
                    },
                    healthcheck=(
                        {
                            "test": ["CMD", "/bin/true"],
                            "interval": 500_000_000,
                            "timeout": 1_000_000_000,
                            "retries": 3,
                        }
                        if service == "gateway"
                        else None
                    ),
                )
            )
        # A container of another project must not show up.
        started.append(
            client.containers.create(base_image, ["true"], labels={"com.docker.compose.project": "other"})
        )
        _wait_healthy(started[0])
        result = deploy("status", "--project", project, "--json", env={"DOCKER_HOST": engine})
        assert result.returncode == 0, result.stdout + result.stderr
        rows = json.loads(result.stdout)
        assert [(r["service"], r["state"], r["health"]) for r in rows] == [
            ("gateway", "running", "healthy"),
            ("redis", "running", "-"),
        ]
        assert rows[0]["image"] == base_image
        table = deploy("status", "--project", project, env={"DOCKER_HOST": engine, "COLUMNS": "200"})
        assert table.returncode == 0 and "healthy" in table.stdout and f"{project}-redis-1" in table.stdout
        empty = deploy("status", "--project", "no-such-project", env={"DOCKER_HOST": engine})
        assert empty.returncode == 0 and "no containers" in empty.stdout
    finally:
        for c in started:
            c.remove(force=True)


@pytest.mark.parametrize("command", [["status"], ["build", "--context", "."]])
def test_no_engine_is_exit_3_with_a_clear_message(tmp_path: Path, command: list[str]) -> None:
    if not sdk_installed():
        unavailable("the Docker SDK (pip package docker) is not installed")
    closed = tmp_path / "closed.sock"
    result = deploy(
        *command, env={"DOCKER_HOST": f"unix://{closed}"}, cwd=Path(__file__).resolve().parents[2]
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "no Docker engine answers at unix://" in result.stderr
