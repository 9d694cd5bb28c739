"""Image build and Compose project status through the Docker SDK (imported lazily).

The engine is found the way the docker CLI finds it (``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``,
``DOCKER_CERT_PATH``, else the local socket); an engine that does not answer is an
:class:`EngineUnreachable` with a message that says where we looked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
COMPOSE_NUMBER_LABEL = "com.docker.compose.container-number"


class EngineUnreachable(RuntimeError):
    """No Docker engine answered."""


class BuildFailed(RuntimeError):
    """The engine reported an error while building."""


class DockerSdkMissing(RuntimeError):
    """The ``docker`` package (knowctl[deploy]) is not installed."""


@dataclass(frozen=True)
class ContainerStatus:
    name: str
    service: str
    number: str
    state: str  # created, running, exited, ...
    health: str  # healthy, unhealthy, starting, or "-" without a healthcheck
    image: str


def _where() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def client(timeout: float = 10.0) -> Any:
    """A connected ``docker.DockerClient``; raises EngineUnreachable if none answers."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:
        raise DockerSdkMissing("the Docker SDK is not installed: pip install 'knowctl[deploy]'") from exc
    try:
        cli = docker.from_env(timeout=int(timeout))
        cli.ping()
    except DockerException as exc:
        raise EngineUnreachable(f"no Docker engine answers at {_where()}: {exc}") from exc
    except OSError as exc:  # requests' ConnectionError is an OSError too
        raise EngineUnreachable(f"no Docker engine answers at {_where()}: {exc}") from exc
    return cli


def _build_stream(
    cli: Any,
    context: Path,
    dockerfile: str,
    tag: str,
    build_args: dict[str, str],
    network_mode: str | None,
    pull: bool,
) -> Iterator[dict[str, Any]]:
    from docker.errors import APIError

    try:
        yield from cli.api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=build_args,
            network_mode=network_mode,
            pull=pull,
            rm=True,
            forcerm=True,
            decode=True,
        )
    except APIError as exc:
        raise BuildFailed(str(exc.explanation or exc)) from exc


def build(
    context: Path,
    tag: str,
    dockerfile: str = "Dockerfile",
    build_args: dict[str, str] | None = None,
    network_mode: str | None = None,
    pull: bool = False,
    on_line: Callable[[str], None] = lambda _line: None,
) -> str:
    """Build ``context`` as ``tag``, passing each progress line to ``on_line``; the image id."""
    cli = client()
    image_id = ""
    try:
        for chunk in _build_stream(cli, context, dockerfile, tag, build_args or {}, network_mode, pull):
            if "error" in chunk:
                raise BuildFailed(str(chunk.get("error")).strip())
            if "stream" in chunk:
                for line in str(chunk["stream"]).splitlines():
                    if line.strip():
                        on_line(line)
            elif "status" in chunk:
                on_line(" ".join(str(chunk[k]) for k in ("status", "progress") if chunk.get(k)))
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = str(aux["ID"])
    finally:
        cli.close()
    if not image_id:  # old engines say it only in the stream; the tag says it for sure
        cli = client()
        try:
            image_id = str(cli.images.get(tag).id)
        finally:
            cli.close()
    return image_id


def project_status(project: str) -> list[ContainerStatus]:
    """Containers of the Compose project ``project`` (running or not), by service and number."""
    cli = client()
    try:
        found = cli.containers.list(all=True, filters={"label": f"{COMPOSE_PROJECT_LABEL}={project}"})
        out = []
        for c in found:
            labels = c.labels or {}
            state = c.attrs.get("State") or {}
            tags = c.image.tags if c.image is not None else []
            out.append(
                ContainerStatus(
                    name=c.name,
                    service=labels.get(COMPOSE_SERVICE_LABEL, "-"),
                    number=labels.get(COMPOSE_NUMBER_LABEL, "-"),
                    state=str(state.get("Status", c.status)),
                    health=str((state.get("Health") or {}).get("Status", "-")),
                    image=tags[0] if tags else str(c.attrs.get("Config", {}).get("Image", "")),
                )
            )
    finally:
        cli.close()
    return sorted(out, key=lambda s: (s.service, s.number, s.name))
