"""``SimulatorApp``, the simulator's ASGI routing: a Gemini-compatible upstream for development and tests.

A raw ASGI callable rather than a framework app: it is the baseline the gateway's benchmarks
are measured against, so the hot path is one ``parse_path``, one orjson parse and one dump.
All state lives in the instance (counters, quota log, pending faults; see
:class:`~knowctl.simulator.state.SimulatorState`), so the gateway's ``--simulate`` mode can
mount one in-process; it needs no lifespan events.

Control endpoints (not part of Google's API; :mod:`knowctl.simulator.control`):

- ``GET /_simulator/stats``: counters (see :meth:`SimulatorApp.stats_json`).
- ``POST /_simulator/reset``: zero counters and the quota log, drop pending faults, stored
  interactions, files, upload sessions, caches, batches and operations.
- ``GET|POST /_simulator/config``: read or change ``latency_ms``, ``chunk_delay_ms``, ``chunks``,
  ``rpm``, ``tpm``, ``window_s``, ``models`` (the models it serves and lists), ``any_model`` and
  ``background_ms`` (how long a ``background: true`` interaction stays ``in_progress``),
  ``cache_min_tokens`` (the smallest context cache it makes; default 0), ``batch_ms`` and
  ``operation_ms`` (how long a batch job and a long-running operation run; default 300);
  ``{"fault": KIND, "count": N}`` makes the next N generate/stream calls fail as KIND (see
  :data:`~knowctl.simulator.state.FAULTS`); ``{"fault": null}`` clears it;
  ``{"generated_file": {"bytes_b64": ..., "mime_type": ..., "display_name": ...}}`` stores a
  downloadable GENERATED file and answers it under ``generated_file``.

Like Google, it serves only the models it lists (:data:`MODELS` by default): any other model
is Google's 404 ``NOT_FOUND``. ``any_model`` serves every name, for tests that give each case a
model of its own (a quota window apart) and listing shows the configured models.

Besides the model calls it serves the Interactions API (:mod:`~knowctl.simulator.interactions`),
the OpenAI-compatible endpoint (:mod:`~knowctl.simulator.openai_compat`), the Files API with
resumable uploads (:mod:`~knowctl.simulator.files`), context caches
(:mod:`~knowctl.simulator.caches`), batch jobs (:mod:`~knowctl.simulator.batches`) and
long-running operations (:mod:`~knowctl.simulator.operations`); docs/wire.md. Files, caches,
batches and operations are routed by their own paths before ``parse_path`` (whose calls carry
less than their handlers need: an operation's model, say); the model actions that create a
batch or start or poll an operation come through ``parse_path`` as the other model actions do.
Injected faults apply to generate/stream calls only.

Mounted under a prefix by a host app, the simulator takes ``root_path`` as the prefix: the
absolute URLs it answers (the upload URL, file URIs) start with it, and a ``path`` that still
carries it (ASGI servers differ on this) is routed without it.
"""

from __future__ import annotations

from knowctl.errors import error_body
from knowctl.net.asgi import (
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    read_body,
    respond,
    respond_error,
    respond_json,
)
from knowctl.policy.paths import Action, ApiCall, Family, Surface, allowed_methods, parse_path
from knowctl.policy.wire import openai
from knowctl.simulator import batches, caches, files, handlers, interactions, live, openai_compat, operations
from knowctl.simulator.catalogue import MODELS, check_models, model_description
from knowctl.simulator.control import CONTROL_PREFIX, control
from knowctl.simulator.google_errors import ENTITY_NOT_FOUND, SIMULATED_PROJECT, in_array, not_found_error
from knowctl.simulator.state import SimulatorConfig, SimulatorState
from knowctl.simulator.wire import is_sse

# Where these names were first defined; the commands and tests import them from here.
__all__ = ["MODELS", "SIMULATED_PROJECT", "SimulatorApp", "SimulatorConfig", "check_models"]


class SimulatorApp(SimulatorState):
    """The ASGI app; see the module docstring."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            elif scope["type"] == "websocket":
                await live.session(scope, receive, send, self.live_counts)
            return
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root + "/"):
            path = path[len(root) :]
        if path.startswith(CONTROL_PREFIX):
            await control(self, path, scope, receive, send)
            return
        if (file_route := files.route(path)) is not None:
            await files.handle(self, file_route, scope, receive, send)
            return
        if (cache_route := caches.route(path)) is not None:
            await caches.handle(self, cache_route, scope, receive, send)
            return
        if (batch_route := batches.route(path)) is not None:
            await batches.handle(self, batch_route, scope, receive, send)
            return
        if (operation_route := operations.route(path)) is not None:
            await operations.handle(self, operation_route, scope, receive, send)
            return
        call = parse_path(path)
        if call is None:
            await respond_error(send, 404, f"The requested URL {path} was not found on this server.")
            return
        if scope["method"] not in allowed_methods(call):
            await respond_error(send, 405, f"Method {scope['method']} is not allowed for {path}.")
            return
        if call.surface is not Surface.MODELS:
            await self._surface(call, scope, receive, send)
            return
        if call.model is None or call.action is None:  # GET on the collection or on one model
            await self._describe(call, send)
            return
        try:
            body = await read_body(receive, self.config.max_body_bytes, None)
        except BodyTooLarge:
            await respond_error(send, 413, "Request payload size exceeds the limit.")
            return
        except ClientDisconnected:
            return
        action = call.action
        if not self.serves(call.model, action):
            self.counters.not_found += 1
            # Errors of a JSON-array stream come wrapped in [ ... ], as Google sends them.
            array = action == Action.STREAM.value and not is_sse(scope["query_string"])
            await respond(send, 404, in_array(not_found_error(call, action), array))
            return
        if action == Action.GENERATE.value or action == Action.STREAM.value:
            await handlers.generate(self, call, call.model, body, scope, receive, send)
        elif action == Action.COUNT_TOKENS.value:
            await handlers.count_tokens(self, call, body, send)
        elif action in batches.CREATE_ACTIONS:
            await batches.create(self, call, call.model, body, send)
        elif action in operations.ACTIONS:
            await operations.model_action(self, call, call.model, body, scope, send)
        else:
            await handlers.other(self, call, call.model, body, send)

    async def _surface(self, call: ApiCall, scope: Scope, receive: Receive, send: Send) -> None:
        """The Interactions API and the OpenAI-compatible endpoint, each with its own errors."""
        if call.surface not in (Surface.INTERACTIONS, Surface.OPENAI):
            # A files / caches / batches / operations path that their own routes do not take.
            self.counters.not_found += 1
            await respond(send, 404, error_body(404, ENTITY_NOT_FOUND))
            return
        try:
            body = await read_body(receive, self.config.max_body_bytes, None)
        except BodyTooLarge:
            message = "Request payload size exceeds the limit."
            if call.surface is Surface.OPENAI:
                await respond(send, 413, openai.error_body(413, message))
            else:
                await respond_error(send, 413, message)
            return
        except ClientDisconnected:
            return
        if call.surface is Surface.INTERACTIONS:
            await interactions.handle(self, call, scope["method"], scope["query_string"], body, send)
        else:
            await openai_compat.handle(self, call, body, send)

    async def _describe(self, call: ApiCall, send: Send) -> None:
        """The model listing (no model in the path) or one model's description."""
        self.counters.listings += 1
        if call.model is None:
            key = "models" if call.family is Family.GEMINI else "publisherModels"
            listed = [model_description(call.family, m) for m in self.config.models]
            await respond_json(send, 200, {key: listed})
        elif self.serves(call.model, None):
            await respond_json(send, 200, model_description(call.family, call.model))
        else:
            self.counters.not_found += 1
            await respond(send, 404, not_found_error(call, "get"))

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
