"""``knowctl simulate``: serve the Gemini-compatible development/test simulator."""

from __future__ import annotations

from typing import Annotated

import typer

BANNER = (
    "knowctl simulate: a DEVELOPMENT/TEST SIMULATOR of the Gemini and Vertex AI APIs, not Google.\n"
    "Answers are deterministic stand-ins. Listening on http://{host}:{port} "
    "(latency {latency_ms:g} ms, rpm {rpm}, tpm {tpm}, window {window_s:g} s).\n"
    "Models: {models}.\n"
    "Control: GET /_simulator/stats, POST /_simulator/reset, GET|POST /_simulator/config"
)


def simulate(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8090,
    latency_ms: Annotated[float, typer.Option(min=0, help="Delay before each model answer.")] = 0.0,
    rpm: Annotated[int, typer.Option(min=0, help="Requests per window (0: unlimited).")] = 0,
    tpm: Annotated[int, typer.Option(min=0, help="Prompt tokens per window (0: unlimited).")] = 0,
    window_s: Annotated[float, typer.Option(min=0.001, help="Length of the rpm/tpm window, seconds.")] = 60.0,
    chunk_delay_ms: Annotated[float, typer.Option(min=0, help="Delay between stream chunks.")] = 0.0,
    chunks: Annotated[int, typer.Option(min=1, help="Chunks per streamed answer.")] = 4,
    models: Annotated[
        str | None,
        typer.Option(
            "--models",
            help="Comma-separated models to serve and list (default: the Gemini API's current "
            "models); any other model is Google's 404.",
            show_default=False,
        ),
    ] = None,
    any_model: Annotated[
        bool,
        typer.Option("--any-model", help="Serve every model name, as no real API does (for tests)."),
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Run a Gemini-compatible simulator (development and tests only; not Google)."""
    # Imported here so that `knowctl --help` does not pay for uvicorn and the app.
    import uvicorn

    from knowctl.commands.common import EXIT_CONFIG, fail
    from knowctl.simulator.answers import BadRequest
    from knowctl.simulator.app import MODELS, SimulatorApp, SimulatorConfig, check_models

    try:
        served = check_models(models) if models is not None else MODELS
    except BadRequest as exc:
        fail(f"--{exc}", EXIT_CONFIG)
    config = SimulatorConfig(
        latency_ms=latency_ms,
        rpm=rpm,
        tpm=tpm,
        window_s=window_s,
        chunk_delay_ms=chunk_delay_ms,
        chunks=chunks,
        models=served,
        any_model=any_model,
    )
    typer.echo(BANNER.format(host=host, port=port, latency_ms=latency_ms, rpm=rpm or "unlimited",
                             tpm=tpm or "unlimited", window_s=window_s,
                             models="any name" if any_model else ", ".join(served)), err=True)  # fmt: skip
    uvicorn.run(
        SimulatorApp(config),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        lifespan="off",
        log_level=log_level,
        # A "hang" fault holds its request until the client leaves; do not let it block exit.
        timeout_graceful_shutdown=3,
    )
