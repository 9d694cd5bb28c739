"""The simulator's long-running operations (docs/wire.md): Veo's ``predictLongRunning``, polled
until it is done, in the shapes google-genai 3.x sends and parses.

- Gemini API: ``POST /{v}/models/{m}:predictLongRunning`` answers ``{"name":
  "models/{m}/operations/{id}"}``; ``GET /{v}/models/{m}/operations/{id}`` polls it. Done, its
  ``response.generateVideoResponse.generatedSamples[].video.uri`` names a GENERATED file of the
  simulator's file store, so that ``client.files.download(file=video)`` fetches it.
- Vertex AI (and express, without the project): ``POST .../publishers/google/models/{m}:
  predictLongRunning`` answers the operation's full name (an UUID at its end), and ``POST
  .../publishers/google/models/{m}:fetchPredictOperation`` with ``{"operationName": name}``
  polls it (a GET of the name is answered too). Done, ``response.videos[]`` carries each video
  as ``bytesBase64Encoded``, or as the ``gcsUri`` it would have been written to when the call
  gave ``parameters.storageUri`` (nothing is written: the simulator has no Cloud Storage).

An operation is done ``operation_ms`` (a simulator knob) after it started; the state follows
the clock (:mod:`~knowctl.simulator.job_store`). The videos are a few dozen bytes each: an MP4
``ftyp`` box and a ``free`` box holding a hash of the model, the prompt and the sample's
number, so the same call makes the same video. A prompt with the block marker gets no video,
only ``raiMediaFilteredCount`` and its reason, as Google filters one.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from knowctl.errors import error_body
from knowctl.net.asgi import (
    Receive,
    Scope,
    Send,
    respond,
    respond_error,
)
from knowctl.policy.paths import ApiCall, Family
from knowctl.simulator import answers
from knowctl.simulator.google_errors import ENTITY_NOT_FOUND, VERTEX_OPERATION_NOT_FOUND
from knowctl.simulator.job_store import StoredOperation
from knowctl.simulator.resources import new_id, public_base, request_body

if TYPE_CHECKING:
    from knowctl.simulator.state import SimulatorState

START, FETCH = "predictLongRunning", "fetchPredictOperation"
ACTIONS = frozenset({START, FETCH})
MAX_SAMPLES = 4
GEMINI_RESPONSE_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
VERTEX_RESPONSE_TYPE = "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"
FILTERED_REASON = (
    "The prompt was filtered by the simulator's stand-in for Google's safety filters "
    f"(it contains {answers.BLOCK_MARKER})."
)
_NAME = r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}"
_ID = r"[^/:]{1,128}"
_GEMINI_PATH = re.compile(rf"/(?P<version>v1|v1beta|v1alpha)/(?P<name>(?:models/{_NAME}/)?operations/{_ID})")
_VERTEX_PATH = re.compile(
    rf"/(?P<version>v1|v1beta1)/(?P<name>(?:projects/{_NAME}/locations/{_NAME}/)?"
    rf"(?:(?:publishers/google/)?models/{_NAME}/)?operations/{_ID})"
)
# An MP4 file-type box (28 bytes: size, "ftyp", brand isom, minor version 0x200, compatible brands).
_FTYP = b"\x00\x00\x00\x1cftypisom\x00\x00\x02\x00isomiso2mp41"


@dataclass(frozen=True, slots=True)
class OperationRoute:
    """A GET of an operation by its name (the path after the version)."""

    family: Family
    name: str


def route(path: str) -> OperationRoute | None:
    """The operation ``path`` names, or None (one substring test for every other path)."""
    if "/operations/" not in path:
        return None
    if match := _GEMINI_PATH.fullmatch(path):
        return OperationRoute(Family.GEMINI, match["name"])
    if match := _VERTEX_PATH.fullmatch(path):
        family = Family.VERTEX if match["name"].startswith("projects/") else Family.EXPRESS
        return OperationRoute(family, match["name"])
    return None


async def handle(
    state: SimulatorState, where: OperationRoute, scope: Scope, receive: Receive, send: Send
) -> None:
    """``GET`` of an operation: it as it stands now."""
    if await request_body(scope, receive, send, ("GET",), 64 * 1024) is None:
        return
    await _answer(state, where.family, where.name, scope, send)


async def model_action(
    state: SimulatorState, call: ApiCall, model: str, body: bytes, scope: Scope, send: Send
) -> None:
    """``:predictLongRunning`` (start one) and Vertex's ``:fetchPredictOperation`` (poll one)."""
    try:
        request = answers.parse_json_object(body)
        if call.action == START:
            await _start(state, call, model, request, send)
            return
        if call.family is Family.GEMINI:  # the Gemini API polls by GET
            await respond_error(send, 404, f"Method not found: {call.action}.")
            return
        name = request.get("operationName", request.get("operation_name"))
        if not isinstance(name, str) or not name:
            raise answers.BadRequest("* FetchPredictOperationRequest.operation_name: required")
    except answers.BadRequest as exc:
        state.counters.bad_requests += 1
        await respond(send, 400, error_body(400, str(exc)))
        return
    if not name.startswith(f"{_model_resource(call, model)}/operations/"):
        state.counters.not_found += 1  # an operation of another model, project or location
        await respond(send, 404, error_body(404, VERTEX_OPERATION_NOT_FOUND.format(name=name)))
        return
    await _answer(state, call.family, name, scope, send)


def _model_resource(call: ApiCall, model: str) -> str:
    """The model as the operation's name starts: ``models/{m}``, or Vertex's publisher model."""
    if call.family is Family.GEMINI:
        return f"models/{model}"
    if call.family is Family.VERTEX:
        return f"projects/{call.project}/locations/{call.location}/publishers/google/models/{model}"
    return f"publishers/google/models/{model}"


async def _start(
    state: SimulatorState, call: ApiCall, model: str, request: dict[str, Any], send: Send
) -> None:
    instances = request.get("instances")
    if not isinstance(instances, list) or len(instances) != 1 or not isinstance(instances[0], dict):
        raise answers.BadRequest("* instances: exactly one instance is required")
    instance = instances[0]
    prompt = instance.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise answers.BadRequest("* instances[0].prompt: must be a string")
    if not prompt and not any(instance.get(key) for key in ("image", "video")):
        raise answers.BadRequest("* instances[0]: a prompt, an image or a video is required")
    parameters = request.get("parameters", {})
    if not isinstance(parameters, dict):
        raise answers.BadRequest("* parameters: must be an object")
    samples = parameters.get("sampleCount", 1)
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
        raise answers.BadRequest(f"* parameters.sample_count: must be an integer in [1, {MAX_SAMPLES}]")
    storage = parameters.get("storageUri") if call.family is not Family.GEMINI else None
    if storage is not None and (not isinstance(storage, str) or not storage.startswith("gs://")):
        raise answers.BadRequest(f"* parameters.storage_uri: a gs:// URI is required, not {storage!r}")
    text = prompt or ""
    filtered = answers.BLOCK_MARKER in text
    operation_id = new_id() if call.family is Family.GEMINI else str(uuid.uuid4())
    now = time.time()
    record = StoredOperation(
        name=f"{_model_resource(call, model)}/operations/{operation_id}",
        model=model,
        vertex=call.family is not Family.GEMINI,
        created=now,
        due=now + state.config.operation_ms / 1000,
        videos=[] if filtered else [video_bytes(model, text, i) for i in range(samples)],
        filtered=FILTERED_REASON if filtered else None,
        storage_uri=storage,
    )
    state.operations.put(record)
    state.counters.operations_started += 1
    await respond(send, 200, orjson.dumps({"name": record.name}))


def video_bytes(model: str, prompt: str, index: int) -> bytes:
    """A tiny deterministic MP4 container (no frames): what the simulator's Veo 'generates'."""
    digest = hashlib.sha256(f"{model}\x00{prompt}\x00{index}".encode()).digest()
    return _FTYP + (8 + len(digest)).to_bytes(4, "big") + b"free" + digest


async def _answer(state: SimulatorState, family: Family, name: str, scope: Scope, send: Send) -> None:
    now = time.time()
    state.settle_jobs(now)
    record = state.operations.get(name)
    if record is None or record.vertex != (family is not Family.GEMINI):
        state.counters.not_found += 1
        message = (
            ENTITY_NOT_FOUND if family is Family.GEMINI else VERTEX_OPERATION_NOT_FOUND.format(name=name)
        )
        await respond(send, 404, error_body(404, message))
        return
    state.counters.operations_polled += 1
    await respond(send, 200, orjson.dumps(operation_json(record, now, scope)))


def operation_json(record: StoredOperation, now: float, scope: Scope) -> dict[str, Any]:
    """The operation as Google answers it: its name alone until it is done."""
    out: dict[str, Any] = {"name": record.name}
    if not record.done(now):
        return out
    out["done"] = True
    if record.vertex:
        response: dict[str, Any] = {"@type": VERTEX_RESPONSE_TYPE, "raiMediaFilteredCount": 0}
        if record.filtered is not None:
            response |= {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": [record.filtered]}
        else:
            response["videos"] = [_vertex_video(record, i, video) for i, video in enumerate(record.videos)]
    else:
        generated: dict[str, Any]
        if record.filtered is not None:
            generated = {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": [record.filtered]}
        else:
            base = _download_base(scope)
            generated = {
                "generatedSamples": [
                    {"video": {"uri": f"{base}/v1beta/files/{file_id}:download?alt=media"}}
                    for file_id in record.video_files
                ]
            }
        response = {"@type": GEMINI_RESPONSE_TYPE, "generateVideoResponse": generated}
    out["response"] = response
    return out


def _vertex_video(record: StoredOperation, index: int, video: bytes) -> dict[str, str]:
    if record.storage_uri is not None:
        operation_id = record.name.rsplit("/", 1)[-1]
        return {
            "gcsUri": f"{record.storage_uri.rstrip('/')}/{operation_id}/sample_{index}.mp4",
            "mimeType": "video/mp4",
        }
    return {"bytesBase64Encoded": base64.b64encode(video).decode(), "mimeType": "video/mp4"}


def _download_base(scope: Scope) -> str:
    """Where a video's URI points: this app (its Host and mount prefix, as
    :func:`~knowctl.simulator.resources.public_base`), always as ``https``.

    google-genai's ``files.download(file=video)`` takes the file's id out of a URI only when it
    starts with ``https://`` (anything else it sends as the name itself, and fails), then asks
    its own base URL for it; so the URI says https even when the simulator is reached by plain
    HTTP. A client that follows the URI by hand there reads the file's ``downloadUri``
    (``files.get``), which keeps the real scheme."""
    return "https://" + public_base(scope).split("://", 1)[1]
