"""The Live API through the gateway, with google-genai's ``live.connect``: a text turn relayed
both ways over real WebSockets, the session counted against the caller and the provider
quota, and every refusal a close with its reason."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types
from websockets.asyncio.client import connect

from tests.gateway.test_gateway_security import ADMIN_TOKEN, keys_env
from tests.support.fixtures import Gateway, Simulator, start_gateway
from tests.support.tls import self_signed

MODEL = "live-model"
LIMITED = "live-limited-model"
LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("live-tls"))


@pytest.fixture(scope="module")
def gateway(
    simulator_process: Simulator,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    certificate: tuple[Path, Path],
) -> Iterator[Gateway]:
    """A gateway serving TLS: google-genai opens the Live API over wss:// whatever the base URL."""
    config = tmp_path_factory.mktemp("live-config") / "knowctl.yaml"
    config.write_text(f"quota_models:\n  {LIMITED}: {{rpm: 1}}\n")
    env = {
        "KNOWCTL_TLS_CERT_FILE": str(certificate[0]),
        "KNOWCTL_TLS_KEY_FILE": str(certificate[1]),
        **keys_env(
            KNOWCTL_USER_LIMITS="none",
            KNOWCTL_QUOTA_RPM="100000",
            KNOWCTL_QUOTA_TPM="100000000",
            KNOWCTL_QUOTA_TOKENS="total",
            KNOWCTL_CONFIG=str(config),
            KNOWCTL_LIVE_MAX_SESSIONS_PER_USER="2",
            KNOWCTL_LIVE_SETUP_TIMEOUT_S="1",
        ),
    }
    where = ("--upstream", simulator_process.url, "--store", redis_url)
    handle, process = start_gateway(tmp_path_factory.mktemp("live"), *where, env=env)
    with process:
        yield handle


@pytest.fixture(scope="module", autouse=True)
def trusted(certificate: tuple[Path, Path]) -> Iterator[None]:
    """The test certificate trusted by every client of this module (httpx and the SDK's)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(certificate[0]))
        yield


def client(gateway: Gateway, key: str) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=gateway.url))


def tls(certificate: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate))


async def one_turn(c: genai.Client, model: str, text: str) -> tuple[str, types.UsageMetadata | None]:
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
    said: list[str] = []
    usage = None
    async with c.aio.live.connect(model=model, config=config) as session:
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text=text)]))
        async for message in session.receive():
            if message.text:
                said.append(message.text)
            if message.usage_metadata is not None:
                usage = message.usage_metadata
            if message.server_content is not None and message.server_content.turn_complete:
                break
    return "".join(said), usage


def admin(gateway: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    return httpx.request(method, gateway.url + path, headers=headers, timeout=10, **kwargs)


def new_key(gateway: Gateway) -> str:
    answer = admin(gateway, "POST", "/api/keys", json={"user": f"u-{uuid.uuid4().hex[:8]}"})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["key"])


def tpm_used(gateway: Gateway, model: str) -> int:
    stats = admin(gateway, "GET", "/api/quota/stats", params={"model": model}).json()
    return int(stats["models"][model]["windows"]["tpm"]["used"])


def test_a_text_turn_is_relayed_and_its_usage_counted(gateway: Gateway, simulator: Simulator) -> None:
    model = f"live-model-{uuid.uuid4().hex[:8]}"  # windows of its own
    c = client(gateway, new_key(gateway))
    text, usage = asyncio.run(one_turn(c, model, "Hello over the Live API"))
    assert text and usage is not None and usage.total_token_count
    assert simulator.stats()["live"] == {"live_sessions": 1, "live_turns": 1}
    deadline = time.monotonic() + 5
    while tpm_used(gateway, model) != usage.total_token_count and time.monotonic() < deadline:
        time.sleep(0.05)  # the settle happens as the session closes
    # The session's reservation made exactly what Google reported, not the estimate.
    assert tpm_used(gateway, model) == usage.total_token_count


def test_refusals_close_with_a_reason(gateway: Gateway, simulator: Simulator) -> None:
    with pytest.raises(errors.APIError) as unknown:
        asyncio.run(one_turn(client(gateway, "not-a-gateway-key"), MODEL, "hi"))
    assert unknown.value.code == 1008 and "key" in str(unknown.value).lower()
    key = new_key(gateway)
    asyncio.run(one_turn(client(gateway, key), LIMITED, "the one request this minute"))
    with pytest.raises(errors.APIError) as quota:
        asyncio.run(one_turn(client(gateway, key), LIMITED, "one too many"))
    assert quota.value.code == 1013 and "retry" in str(quota.value).lower()
    assert simulator.stats()["live"]["live_sessions"] == 1  # the refused ones never reached it


def test_too_many_sessions_and_a_missing_setup(gateway: Gateway, certificate: tuple[Path, Path]) -> None:
    key = new_key(gateway)
    context = tls(certificate[0])
    url = gateway.url.replace("https://", "wss://") + LIVE_PATH
    headers = {"x-goog-api-key": key}

    async def scenario() -> tuple[int | None, str, int | None]:
        setup = b'{"setup": {"model": "models/' + MODEL.encode() + b'"}}'
        async with (
            connect(url, additional_headers=headers, ssl=context) as one,
            connect(url, additional_headers=headers, ssl=context) as two,
        ):
            for ws in (one, two):
                await ws.send(setup)
                await ws.recv()  # setupComplete
            async with connect(url, additional_headers=headers, ssl=context) as third:
                await third.send(setup)
                await third.wait_closed()
                over = third.close_code, third.close_reason
        async with connect(url, additional_headers=headers, ssl=context) as silent:  # no setup within 1 s
            await silent.wait_closed()
            return over[0], over[1], silent.close_code

    code, reason, silent = asyncio.run(scenario())
    assert code == 1008 and "at most 2" in reason.lower()
    assert silent == 1008


def test_a_client_that_vanishes_leaves_the_daemon_healthy(
    gateway: Gateway, certificate: tuple[Path, Path]
) -> None:
    host, port = gateway.url.removeprefix("https://").split(":")
    path = LIVE_PATH
    with (
        socket.create_connection((host, int(port)), timeout=5) as plain,
        tls(certificate[0]).wrap_socket(plain, server_hostname=host) as raw,
    ):
        raw.sendall(
            (
                f"GET {path} HTTP/1.1\r\nhost: {host}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
                f"x-goog-api-key: {new_key(gateway)}\r\n\r\n"
            ).encode()
        )
        assert raw.recv(4096).startswith(b"HTTP/1.1 101")
    text, _ = asyncio.run(one_turn(client(gateway, new_key(gateway)), MODEL, "still here?"))
    assert text


def test_an_oversized_frame_and_a_stop_close_sessions_cleanly(
    simulator_process: Simulator, redis_url: str, tmp_path: Path
) -> None:
    """Plain ws:// (clients other than google-genai may skip TLS): a message past the limit is
    1009, and a stopping daemon tells its open session to go away before it exits."""
    env = {
        "KNOWCTL_LIVE_MAX_MESSAGE_BYTES": str(64 * 1024),
        "KNOWCTL_DRAIN_TIMEOUT": "5",
        **keys_env(KNOWCTL_USER_LIMITS="none"),
    }
    handle, process = start_gateway(
        tmp_path, "--upstream", simulator_process.url, "--store", redis_url, env=env
    )
    url = handle.url.replace("http://", "ws://") + LIVE_PATH
    setup = b'{"setup": {"model": "models/' + MODEL.encode() + b'"}}'
    with process as proc:
        key = new_key(handle)
        headers = {"x-goog-api-key": key}

        async def oversized() -> int | None:
            async with connect(url, additional_headers=headers, max_size=None) as ws:
                await ws.send(setup)
                await ws.recv()
                await ws.send(b"x" * (128 * 1024))
                await ws.wait_closed()
                return ws.close_code

        assert asyncio.run(oversized()) == 1009

        async def stopped() -> tuple[int | None, float]:
            async with connect(url, additional_headers=headers) as ws:
                await ws.send(setup)
                await ws.recv()
                began = time.monotonic()
                proc.send_signal(15)
                await ws.wait_closed()
                return ws.close_code, time.monotonic() - began

        code, took = asyncio.run(stopped())
        assert code in (1001, 1012) and took < 5, (code, took)  # going away / service restart
        assert proc.wait(timeout=10) == 0
