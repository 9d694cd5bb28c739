"""The gateway behind an egress proxy: a real tinyproxy between it and the simulator.
HTTP_PROXY / HTTPS_PROXY are honoured unless NO_PROXY names the host, and a deployment may
name a proxy of its own (the https tunnel, with TLS checked as ever: tests/net/test_http1.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import yaml

from tests.support.fixtures import Simulator, start_gateway
from tests.support.tinyproxy import tinyproxy

BODY = {"contents": [{"role": "user", "parts": [{"text": "through the proxy"}]}]}


def call(url: str) -> str:
    """One generateContent through the gateway at ``url``; the path the upstream saw."""
    path = f"/v1beta/models/proxy-{uuid.uuid4().hex[:8]}:generateContent"
    response = httpx.post(url + path, json=BODY, timeout=30)
    assert response.status_code == 200, response.text
    return path


def test_the_environments_proxy_is_used_unless_no_proxy_names_the_host(
    tmp_path: Path, simulator: Simulator
) -> None:
    quiet = {"KNOWCTL_USER_LIMITS": "none", "KNOWCTL_CACHE_ENABLED": "false"}
    with tinyproxy(tmp_path) as proxy:
        handle, process = start_gateway(
            tmp_path, "--upstream", simulator.url, env={**quiet, "HTTP_PROXY": proxy.url, "NO_PROXY": ""}
        )
        with process:
            path = call(handle.url)
        assert proxy.seen(f"POST {simulator.url}{path}") == 1
        handle, process = start_gateway(
            tmp_path,
            "--upstream",
            simulator.url,
            env={**quiet, "http_proxy": proxy.url, "no_proxy": "localhost,127.0.0.1"},
        )
        with process:
            path = call(handle.url)
        assert proxy.seen(path) == 0  # NO_PROXY: straight to the upstream


def test_a_deployment_goes_through_its_own_proxy(tmp_path: Path, simulator: Simulator) -> None:
    with tinyproxy(tmp_path) as proxy:
        config = tmp_path / "pool.yaml"
        pool = [{"name": "proxied", "url": simulator.url, "proxy": proxy.url}]
        config.write_text(yaml.safe_dump({"upstreams": pool}))
        environ = {"KNOWCTL_CONFIG": str(config), "KNOWCTL_AUTH_MODE": "anonymous", "NO_PROXY": "*"}
        handle, process = start_gateway(tmp_path, env=environ)
        with process:
            path = call(handle.url)
        assert proxy.seen(f"POST {simulator.url}{path}") == 1  # its own proxy, whatever NO_PROXY says
