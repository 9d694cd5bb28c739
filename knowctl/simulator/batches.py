"""The simulator's batch jobs (docs/wire.md): the Gemini API's batches (generateContent and
embedContent requests, inline or in a JSONL file) and Vertex AI's batch prediction jobs, in
the shapes google-genai 3.x sends and parses.

- Gemini API: ``POST /{v}/models/{m}:batchGenerateContent`` and ``:asyncBatchEmbedContent``
  create one (model actions, so :mod:`~knowctl.simulator.app` hands them to :func:`create`);
  ``/{v}/batches[/{id}[:cancel]]`` lists, reads, cancels and deletes. A batch is an Operation
  whose ``metadata`` is the batch (``GenerateContentBatch`` / ``EmbedContentBatch``, state
  ``BATCH_STATE_*``); once done, its output is both in ``metadata.output`` (which the SDK reads)
  and in ``response`` (what the REST docs read).
- Vertex AI: ``/{v}/projects/{p}/locations/{l}/batchPredictionJobs[/{id}[:cancel]]``, the job
  itself (state ``JOB_STATE_*``), created by POST to the collection.

A batch runs ``batch_ms`` (a simulator knob): PENDING for the first half, RUNNING for the
second, then SUCCEEDED (see :mod:`~knowctl.simulator.job_store`: the state follows the clock).
Each Gemini API request is answered by the simulator's own generation path (answers, usage,
context caches) or embedding path when the batch is made; one that cannot be answered gets its
own ``error`` and the batch still succeeds, as Google's do. A file-input batch reads its JSONL
input (``{"key", "request"}`` lines; the file store keeps the bytes of uploads up to 1 MiB) and
its responses become a GENERATED file ``files/batch-{id}`` when it is done. Vertex reads from
and writes to Cloud Storage or BigQuery, which the simulator has not got: its jobs answer
nothing but report where the output went (``outputInfo``).

Batches answer no quota errors and count in none of the generation counters; they have their own.
"""

from __future__ import annotations

import re
import secrets
import time
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
from knowctl.simulator import answers, caches
from knowctl.simulator.google_errors import (
    ENTITY_NOT_FOUND,
    FILE_DENIED,
    RPC_CANCELLED,
    VERTEX_JOB_NOT_FOUND,
    not_found_error,
    rpc_status,
)
from knowctl.simulator.job_store import (
    CANCELLED,
    EMBED,
    GENERATE,
    PENDING,
    PREDICTION,
    SUCCEEDED,
    StoredBatch,
)
from knowctl.simulator.resources import new_id, page, page_size, query_params, request_body, rfc3339

if TYPE_CHECKING:
    from knowctl.simulator.state import SimulatorState

CREATE_ACTIONS = {"batchGenerateContent": GENERATE, "asyncBatchEmbedContent": EMBED}
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000  # the simulator's choice: Google's are not on record
MAX_VERTEX_DISPLAY_NAME = 128
_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main."
# The batch resource (an Operation's metadata) and its output (its response), by kind.
_GEMINI_TYPES = {
    GENERATE: (_TYPE + "GenerateContentBatch", _TYPE + "GenerateContentBatchOutput"),
    EMBED: (_TYPE + "EmbedContentBatch", _TYPE + "EmbedContentBatchOutput"),
}
_VERTEX_DELETE_TYPE = "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}"
_ID = r"[^/:]{1,128}"
_GEMINI_PATH = re.compile(rf"/(?P<version>v1|v1beta|v1alpha)/batches(?:/(?P<id>{_ID})(?P<cancel>:cancel)?)?")
_VERTEX_PATH = re.compile(
    rf"/(?P<version>v1|v1beta1)/(?P<scope>projects/(?P<project>{_NAME})/locations/(?P<location>{_NAME}))"
    rf"/batchPredictionJobs(?:/(?P<id>{_ID})(?P<cancel>:cancel)?)?"
)
_VERTEX_MODEL = re.compile(
    rf"(?:projects/{_NAME}/locations/{_NAME}/)?publishers/google/models/(?P<model>{_NAME})"
)


@dataclass(frozen=True, slots=True)
class BatchRoute:
    """A batches / batchPredictionJobs path: family, version, scope, the job's id and whether it
    is a cancel."""

    family: Family
    version: str
    scope: str
    job_id: str | None
    cancel: bool = False
    project: str | None = None
    location: str | None = None


def route(path: str) -> BatchRoute | None:
    """The batch call ``path`` names, or None (one substring test for every other path)."""
    if "/batches" not in path and "/batchPredictionJobs" not in path:
        return None
    if match := _GEMINI_PATH.fullmatch(path):
        return BatchRoute(Family.GEMINI, match["version"], "", match["id"], match["cancel"] is not None)
    if match := _VERTEX_PATH.fullmatch(path):
        return BatchRoute(
            Family.VERTEX,
            match["version"],
            match["scope"],
            match["id"],
            match["cancel"] is not None,
            match["project"],
            match["location"],
        )
    return None


def _methods(where: BatchRoute) -> tuple[str, ...]:
    if where.cancel:
        return ("POST",)
    if where.job_id is not None:
        return ("GET", "DELETE")
    # Vertex creates a job by POST to its collection; the Gemini API by a model action.
    return ("GET", "POST") if where.family is Family.VERTEX else ("GET",)


async def handle(
    state: SimulatorState, where: BatchRoute, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer one batches / batchPredictionJobs call."""
    method = scope["method"]
    body = await request_body(scope, receive, send, _methods(where), state.config.max_body_bytes)
    if body is None:
        return
    now = time.time()
    state.settle_jobs(now)
    try:
        if where.job_id is None:
            if method == "POST":
                await _create_vertex(state, where, body, send, now)
            else:
                await _list(state, where, scope, send, now)
            return
        name = (
            f"{where.scope}/batchPredictionJobs/{where.job_id}" if where.scope else f"batches/{where.job_id}"
        )
        record = state.batches.get(name)
        if record is None:
            state.counters.not_found += 1
            message = VERTEX_JOB_NOT_FOUND.format(name=name) if where.scope else ENTITY_NOT_FOUND
            await respond(send, 404, error_body(404, message))
        elif where.cancel:
            if not record.finished(now):
                record.cancelled = now
                state.counters.batches_cancelled += 1
            await respond(send, 200, b"{}")
        elif method == "DELETE":
            state.batches.delete(name)
            state.counters.batches_deleted += 1
            await respond(send, 200, b"{}" if not where.scope else _vertex_deleted(where.scope, now))
        else:
            await respond(send, 200, orjson.dumps(resource(record, now)))
    except answers.BadRequest as exc:
        state.counters.bad_requests += 1
        await respond(send, 400, error_body(400, str(exc)))


# ---------------------------------------------------------------------------- the resources


def resource(record: StoredBatch, now: float, full: bool = True, fresh: bool = False) -> dict[str, Any]:
    """The batch as Google answers it: a Gemini API Operation, or a Vertex BatchPredictionJob.
    ``full``: with its output (a get; a listing leaves it out, as Google's does); ``fresh``: the
    answer to its create, always PENDING."""
    state = PENDING if fresh else record.state(now)
    if record.kind == PREDICTION:
        return _vertex_job(record, now, state)
    return _gemini_batch(record, now, state, full)


def _gemini_batch(record: StoredBatch, now: float, state: str, full: bool) -> dict[str, Any]:
    batch_type, output_type = _GEMINI_TYPES[record.kind]
    done = state in (SUCCEEDED, CANCELLED)
    output = _gemini_output(record) if state == SUCCEEDED and full else None
    metadata: dict[str, Any] = {"@type": batch_type, "model": record.model}
    if record.display_name is not None:
        metadata["displayName"] = record.display_name
    if output is not None:
        metadata["output"] = output
    metadata["createTime"] = rfc3339(record.created)
    ended = record.ended(now) if done else None
    if ended is not None:
        metadata["endTime"] = rfc3339(ended)
    metadata["updateTime"] = rfc3339(record.created if state == PENDING else record.updated(now))
    count = str(record.request_count)  # int64 in JSON: a string
    if state == SUCCEEDED:
        stats = {
            "requestCount": count,
            "successfulRequestCount": str(record.request_count - record.failed_count),
        }
        if record.failed_count:
            stats["failedRequestCount"] = str(record.failed_count)
    elif state == CANCELLED:
        stats = {"requestCount": count}
    else:
        stats = {"requestCount": count, "pendingRequestCount": count}
    metadata |= {"batchStats": stats, "state": f"BATCH_STATE_{state}", "name": record.name}
    out: dict[str, Any] = {"name": record.name, "metadata": metadata}
    if done:
        out["done"] = True
    if output is not None:
        out["response"] = {"@type": output_type, **output}
    elif state == CANCELLED:
        out["error"] = {"code": RPC_CANCELLED, "message": "The batch was cancelled."}
    return out


def _gemini_output(record: StoredBatch) -> dict[str, Any]:
    if record.responses_file is not None:
        return {"responsesFile": record.responses_file}
    return {"inlinedResponses": {"inlinedResponses": record.inlined or []}}


def _vertex_job(record: StoredBatch, now: float, state: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": record.name}
    if record.display_name is not None:
        out["displayName"] = record.display_name
    out["model"] = record.model
    out["inputConfig"] = record.input_config or {}
    out["outputConfig"] = record.output_config or {}
    if state == SUCCEEDED:
        out["outputInfo"] = _output_info(record.output_config or {}, record.created)
    out["state"] = f"JOB_STATE_{state}"
    if state == CANCELLED:
        # Vertex's words for a cancelled job: google.rpc.Code.CANCELLED.
        out["error"] = {"code": RPC_CANCELLED, "message": "CANCELED"}
    out["createTime"] = rfc3339(record.created)
    started = record.cancelled if record.cancelled is not None else now
    if state != PENDING and started >= record.starts:
        out["startTime"] = rfc3339(record.starts)
    ended = record.ended(now) if state in (SUCCEEDED, CANCELLED) else None
    if ended is not None:
        out["endTime"] = rfc3339(ended)
    out["updateTime"] = rfc3339(record.created if state == PENDING else record.updated(now))
    return out


def _output_info(output_config: dict[str, Any], created: float) -> dict[str, str]:
    """Where Vertex says it wrote the predictions: a directory under the GCS prefix, or a
    BigQuery table (the one named, or ``predictions_{time}`` in the named dataset)."""
    stamp = rfc3339(created)
    gcs = output_config.get("gcsDestination", {}).get("outputUriPrefix")
    if isinstance(gcs, str):
        return {"gcsOutputDirectory": f"{gcs.rstrip('/')}/prediction-model-{stamp}"}
    target = str(output_config.get("bigqueryDestination", {}).get("outputUri", ""))
    parts = target.removeprefix("bq://").split(".")
    table = parts[2] if len(parts) > 2 else "predictions_" + re.sub(r"[^0-9]", "_", stamp[:23]) + "Z"
    return {"bigqueryOutputDataset": "bq://" + ".".join(parts[:2]), "bigqueryOutputTable": table}


def _vertex_deleted(scope: str, now: float) -> bytes:
    """Vertex answers a delete with its (here already done) long-running operation."""
    return orjson.dumps(
        {
            "name": f"{scope}/operations/{10**18 + secrets.randbelow(9 * 10**18)}",
            "metadata": {
                "@type": _VERTEX_DELETE_TYPE,
                "genericMetadata": {"createTime": rfc3339(now), "updateTime": rfc3339(now)},
            },
            "done": True,
            "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
        }
    )


async def _list(state: SimulatorState, where: BatchRoute, scope: Scope, send: Send, now: float) -> None:
    """Newest first; each entry without its output, as Google lists them; keys left out when empty."""
    params = query_params(scope)
    size = page_size(params, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    items = state.batches.newest_first(lambda b: b.scope == where.scope)
    chosen, token = page(items, lambda b: b.seq, size, params.get("pageToken"))
    out: dict[str, Any] = {}
    if chosen:
        key = "batchPredictionJobs" if where.scope else "operations"
        out[key] = [resource(b, now, full=False) for b in chosen]
    if token is not None:
        out["nextPageToken"] = token
    await respond(send, 200, orjson.dumps(out))


# ---------------------------------------------------------------------------- Gemini API create


async def create(state: SimulatorState, call: ApiCall, model: str, body: bytes, send: Send) -> None:
    """``:batchGenerateContent`` / ``:asyncBatchEmbedContent`` (Gemini API only): the batch, PENDING."""
    kind = CREATE_ACTIONS[call.action or ""]
    if call.family is not Family.GEMINI:
        await respond_error(send, 404, f"Method not found: {call.action}.")
        return
    now = time.time()
    try:
        batch = answers.parse_json_object(body).get("batch")
        if not isinstance(batch, dict):
            raise answers.BadRequest("* BatchGenerateContentRequest.batch: batch is not specified")
        display_name = batch.get("displayName", batch.get("display_name"))
        if display_name is not None and not isinstance(display_name, str):
            raise answers.BadRequest("* GenerateContentBatch.display_name: must be a string")
        inline, file_name = _input(batch)
        if inline is not None:
            results = [_inline_item(state, call, model, kind, item) for item in inline]
            failed = sum("error" in r for r in results)
            count, responses = len(results), None
        else:
            assert file_name is not None
            file_id = file_name.removeprefix("files/")
            stored = state.files.get(file_id, now)
            if stored is None:
                state.counters.not_found += 1
                await respond(send, 403, error_body(403, FILE_DENIED.format(id=file_id)))
                return
            if stored.content is None:
                raise answers.BadRequest(
                    f"The simulator reads batch input files of at most 1 MiB that were uploaded to it; "
                    f"{file_name} is not one."
                )
            lines = _file_lines(state, call, model, kind, stored.content)
            failed = sum("error" in line for line in lines)
            count, results = len(lines), None
            responses = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    except answers.BadRequest as exc:
        state.counters.bad_requests += 1
        await respond(send, 400, error_body(400, str(exc)))
        return
    delay = state.config.batch_ms / 1000
    record = StoredBatch(
        id=_unused_id(state, ""),
        scope="",
        kind=kind,
        model=f"models/{model}",
        display_name=display_name,
        created=now,
        starts=now + delay / 2,
        due=now + delay,
        request_count=count,
        failed_count=failed,
        inlined=results,
        responses=responses,
    )
    state.batches.put(record)
    counters = state.counters
    counters.batches_created += 1
    counters.batch_requests += count
    if kind == EMBED:
        counters.embedded_items += count - failed
    await respond(send, 200, orjson.dumps(resource(record, now, fresh=True)))


def _input(batch: dict[str, Any]) -> tuple[list[Any] | None, str | None]:
    """The inline requests or the input file's name: exactly one (raises BadRequest)."""
    config = batch.get("inputConfig", batch.get("input_config"))
    if not isinstance(config, dict):
        raise answers.BadRequest("* GenerateContentBatch.input_config: input_config is not specified")
    requests = config.get("requests")
    # google-genai sends fileName for a generation batch and file_name for an embedding one.
    file_name = config.get("fileName", config.get("file_name"))
    if (requests is None) == (file_name is None):
        raise answers.BadRequest("* InputConfig: exactly one of requests and file_name must be set")
    if file_name is not None:
        if not isinstance(file_name, str) or not re.fullmatch(r"files/[^/:]{1,128}", file_name):
            raise answers.BadRequest(f"* InputConfig.file_name: {file_name!r} is not a file name (files/ID)")
        return None, file_name
    inner = requests.get("requests") if isinstance(requests, dict) else None
    if not isinstance(inner, list) or not inner:
        raise answers.BadRequest("* InputConfig.requests.requests: at least one request is required")
    return inner, None


def _inline_item(state: SimulatorState, call: ApiCall, model: str, kind: str, item: Any) -> dict[str, Any]:
    """One InlinedResponse: the answer (or error) to ``{"request": ..., "metadata": ...}``."""
    if not isinstance(item, dict):
        return {"error": rpc_status(400, "* InlinedRequest: must be an object")}
    out = _answer(state, call, model, kind, item.get("request"))
    if item.get("metadata") is not None:
        out["metadata"] = item["metadata"]
    return out


def _file_lines(
    state: SimulatorState, call: ApiCall, model: str, kind: str, content: bytes
) -> list[dict[str, Any]]:
    """The responses file's lines for an input file of ``{"key": ..., "request": ...}`` lines."""
    try:
        text = content.decode()
    except UnicodeDecodeError:
        raise answers.BadRequest("The batch input file is not UTF-8 JSONL.") from None
    out: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            entry = None
        if not isinstance(entry, dict):
            out.append({"error": rpc_status(400, f"Line {number} of the input file is not a JSON object.")})
            continue
        answered = _answer(state, call, model, kind, entry.get("request"))
        out.append({"key": entry["key"], **answered} if "key" in entry else answered)
    if not out:
        raise answers.BadRequest("The batch input file holds no requests.")
    return out


def _answer(state: SimulatorState, call: ApiCall, model: str, kind: str, request: Any) -> dict[str, Any]:
    """``{"response": ...}``, as generateContent or embedContent answers ``request``, or
    ``{"error": google.rpc.Status}``."""
    try:
        if not isinstance(request, dict):
            raise answers.BadRequest("* request: must be an object")
        if kind == EMBED:
            return {"response": _embedding(model, request)}
        cached = caches.cached_prefix(state, call, model, request)
        answer = answers.make_answer(model, request, orjson.dumps(request), cached)
    except answers.BadRequest as exc:
        return {"error": rpc_status(400, str(exc))}
    except caches.CacheRefused as exc:
        message = orjson.loads(exc.body)["error"]["message"]
        return {"error": rpc_status(exc.status, message)}
    return {"response": answers.response(answer)}


def _embedding(model: str, request: dict[str, Any]) -> dict[str, Any]:
    """What embedContent answers, with the prompt tokens Google's batch answers add."""
    if not isinstance(request.get("content"), dict):
        raise answers.BadRequest("* EmbedContentRequest.content: content is not specified")
    tokens = answers.prompt_tokens([answers.embed_item_text(request)])
    return {
        "embedding": {"values": answers.embedding(model, request)},
        "usageMetadata": {"promptTokenCount": tokens},
    }


def _unused_id(state: SimulatorState, scope: str) -> str:
    """Gemini API batch ids are 36 lowercase letters and digits; Vertex AI's are numbers."""
    while True:
        job_id = str(10**18 + secrets.randbelow(9 * 10**18)) if scope else new_id(36)
        name = f"{scope}/batchPredictionJobs/{job_id}" if scope else f"batches/{job_id}"
        if not state.batches.has(name):
            return job_id


# ---------------------------------------------------------------------------- Vertex AI create


async def _create_vertex(
    state: SimulatorState, where: BatchRoute, body: bytes, send: Send, now: float
) -> None:
    request = answers.parse_json_object(body)
    model = request.get("model")
    match = _VERTEX_MODEL.fullmatch(model) if isinstance(model, str) else None
    if match is None:
        raise answers.BadRequest(
            "* BatchPredictionJob.model: a model named publishers/google/models/{m} is required, "
            f"not {model!r}"
        )
    assert isinstance(model, str)
    if not state.serves(match["model"], None):
        state.counters.not_found += 1
        call = ApiCall(where.family, where.version, match["model"], None, where.project, where.location)
        await respond(send, 404, not_found_error(call, "batchPredictionJobs.create"))
        return
    display_name = request.get("displayName", request.get("display_name"))
    if not isinstance(display_name, str) or not display_name or len(display_name) > MAX_VERTEX_DISPLAY_NAME:
        raise answers.BadRequest(
            f"* BatchPredictionJob.display_name: required, at most {MAX_VERTEX_DISPLAY_NAME} characters"
        )
    input_config = _vertex_config(
        request, "inputConfig", ("gcsSource", "uris"), ("bigquerySource", "inputUri")
    )
    output_config = _vertex_config(
        request, "outputConfig", ("gcsDestination", "outputUriPrefix"), ("bigqueryDestination", "outputUri")
    )
    delay = state.config.batch_ms / 1000
    record = StoredBatch(
        id=_unused_id(state, where.scope),
        scope=where.scope,
        kind=PREDICTION,
        model=model,
        display_name=display_name,
        created=now,
        starts=now + delay / 2,
        due=now + delay,
        request_count=0,  # the rows are in Cloud Storage or BigQuery, which the simulator has not got
        input_config=input_config,
        output_config=output_config,
    )
    state.batches.put(record)
    state.counters.batches_created += 1
    await respond(send, 200, orjson.dumps(resource(record, now, fresh=True)))


def _vertex_config(
    request: dict[str, Any], field: str, gcs: tuple[str, str], bigquery: tuple[str, str]
) -> dict[str, Any]:
    """``inputConfig`` / ``outputConfig``: a GCS (``gs://``) or BigQuery (``bq://``) place, one only."""
    config = request.get(field)
    if not isinstance(config, dict):
        raise answers.BadRequest(f"* BatchPredictionJob.{field}: required")
    where = [(outer, inner) for outer, inner in (gcs, bigquery) if outer in config]
    if len(where) != 1:
        raise answers.BadRequest(
            f"* BatchPredictionJob.{field}: exactly one of {gcs[0]} and {bigquery[0]} is required"
        )
    outer, inner = where[0]
    value = config[outer].get(inner) if isinstance(config[outer], dict) else None
    scheme = "gs://" if outer == gcs[0] else "bq://"
    values = value if isinstance(value, list) and outer == "gcsSource" else [value]
    if not values or not all(
        isinstance(v, str) and v.startswith(scheme) and len(v) > len(scheme) for v in values
    ):
        raise answers.BadRequest(
            f"* BatchPredictionJob.{field}.{outer}.{inner}: {scheme} URI(s) required, not {value!r}"
        )
    return config
