"""The simulator's batch jobs (Gemini API batches, Vertex AI batch prediction jobs) and
long-running operations (Veo's predictLongRunning), through the official google-genai 3.x
client against a real simulator process, and raw HTTP for the wire shapes the SDK hides."""

from __future__ import annotations

import io
import re
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.oauth2.credentials import Credentials

from knowctl.simulator.file_store import KEPT_UPLOAD_BYTES, FileBook
from knowctl.simulator.job_store import CANCELLED, GENERATE, PENDING, RUNNING, SUCCEEDED, JobBook, StoredBatch
from knowctl.simulator.operations import video_bytes
from tests.support.simulator import Simulator, simulator_process

MODEL = "gemini-2.5-flash"
EMBED = "gemini-embedding-001"
VEO = "veo-3.1-generate-preview"
PROJECT, LOCATION = "demo-project", "us-central1"
STEP_MS = 300  # how long a batch or an operation runs here: RUNNING is seen for its second half
LONG_MS = 60_000  # long enough to be cancelled, listed or deleted while it still runs
T = TypeVar("T")


@pytest.fixture(scope="module")
def sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    with simulator_process(log_path=tmp_path_factory.mktemp("sim") / "simulator.log") as sim:
        yield sim


@pytest.fixture
def sim(sim_process: Simulator) -> Simulator:
    sim_process.restore()  # also drops every batch, operation and file
    sim_process.configure(batch_ms=STEP_MS, operation_ms=STEP_MS)
    return sim_process


def genai_client(sim: Simulator) -> Any:  # the SDK's unions, untyped here
    return genai.Client(api_key="k", http_options=types.HttpOptions(base_url=sim.url))


def vertex_client(sim: Simulator) -> Any:
    return genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=Credentials(token="static-oauth-token"),  # type: ignore[no-untyped-call]
        http_options=types.HttpOptions(base_url=sim.url),
    )


def poll(fetch: Callable[[], T], finished: Callable[[T], bool], timeout: float = 5.0) -> tuple[T, list[T]]:
    """Fetch until ``finished``; the last answer and every answer on the way."""
    seen = [fetch()]
    deadline = time.monotonic() + timeout
    while not finished(seen[-1]):
        assert time.monotonic() < deadline, f"not finished after {timeout} s: {seen[-1]!r}"
        time.sleep(0.03)
        seen.append(fetch())
    return seen[-1], seen


def google_error(response: httpx.Response, code: int, status: str) -> str:
    assert response.status_code == code, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["status"] == status
    message: str = error["message"]
    return message


def text_of(response: Any) -> str:
    text: str = response.candidates[0].content.parts[0].text
    return text


# ---------------------------------------------------------------- Gemini API batches


def test_inline_batch_moves_pending_running_succeeded_with_the_simulators_answers(sim: Simulator) -> None:
    client = genai_client(sim)
    created = client.batches.create(
        model=MODEL,
        src=[
            {
                "contents": [{"parts": [{"text": "first question"}], "role": "user"}],
                "metadata": {"key": "one"},
            },
            {"contents": "second question", "config": {"max_output_tokens": 5}},
        ],
        config={"display_name": "two asks"},
    )
    assert created.name is not None and re.fullmatch(r"batches/[a-z0-9]{36}", created.name)
    assert created.state == types.JobState.JOB_STATE_PENDING and not created.done
    assert created.display_name == "two asks" and created.model == f"models/{MODEL}"
    assert created.dest is None and created.create_time == created.update_time
    done, seen = poll(lambda: client.batches.get(name=created.name), lambda b: b.done)
    states = [b.state for b in seen]
    order = [
        types.JobState.JOB_STATE_PENDING,
        types.JobState.JOB_STATE_RUNNING,
        types.JobState.JOB_STATE_SUCCEEDED,
    ]
    assert states == sorted(states, key=order.index) and types.JobState.JOB_STATE_RUNNING in states
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.end_time is not None
    first, second = done.dest.inlined_responses
    # Each request is answered as generateContent answers it: the same text and usage.
    direct = client.models.generate_content(model=MODEL, contents="first question")
    assert text_of(first.response) == direct.text and first.metadata == {"key": "one"}
    assert first.response.usage_metadata.total_token_count == direct.usage_metadata.total_token_count
    assert (
        second.metadata is None
        and second.response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    )
    assert second.response.usage_metadata.candidates_token_count == 5
    raw = httpx.get(f"{sim.url}/v1beta/{created.name}", timeout=10).json()
    assert raw["done"] is True and raw["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert raw["metadata"]["@type"].endswith("v1main.GenerateContentBatch")
    assert raw["response"]["@type"].endswith("v1main.GenerateContentBatchOutput")
    assert raw["response"]["inlinedResponses"] == raw["metadata"]["output"]["inlinedResponses"]
    assert raw["metadata"]["batchStats"] == {"requestCount": "2", "successfulRequestCount": "2"}
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["batches_succeeded"] == 1
    assert stats["batch_requests"] == 2 and stats["served"] == 1  # the batch is not among the served calls


def test_a_request_that_cannot_be_answered_fails_alone(sim: Simulator) -> None:
    body = {
        "batch": {
            "displayName": "raw",
            "inputConfig": {
                "requests": {
                    "requests": [
                        {"request": {"contents": [{"parts": [{"text": "fine"}]}]}, "metadata": {"key": "ok"}},
                        {"request": {"contents": []}, "metadata": {"key": "empty"}},
                        {"request": {"contents": "x", "cachedContent": "cachedContents/nope"}},
                    ]
                }
            },
        }
    }
    created = httpx.post(
        f"{sim.url}/v1beta/models/{MODEL}:batchGenerateContent", json=body, timeout=10
    ).json()
    assert created["metadata"]["batchStats"] == {"requestCount": "3", "pendingRequestCount": "3"}
    assert "done" not in created and "response" not in created
    done, _ = poll(
        lambda: httpx.get(f"{sim.url}/v1beta/{created['name']}", timeout=10).json(), lambda b: "done" in b
    )
    ok, empty, uncached = done["response"]["inlinedResponses"]["inlinedResponses"]
    assert ok["metadata"] == {"key": "ok"} and "candidates" in ok["response"]
    assert empty["error"]["code"] == 3 and "contents is not specified" in empty["error"]["message"]
    assert uncached["error"] == {"code": 7, "message": "CachedContent not found (or permission denied)"}
    assert done["metadata"]["batchStats"] == {
        "requestCount": "3",
        "successfulRequestCount": "1",
        "failedRequestCount": "2",
    }
    refused = httpx.post(
        f"{sim.url}/v1beta/models/{MODEL}:batchGenerateContent", json={"batch": {}}, timeout=10
    )
    assert "input_config" in google_error(refused, 400, "INVALID_ARGUMENT")


def test_list_pages_cancel_delete_and_unknown(sim: Simulator) -> None:
    client = genai_client(sim)
    assert httpx.get(f"{sim.url}/v1beta/batches", timeout=10).json() == {}  # no keys when empty
    assert list(client.batches.list()) == []
    sim.configure(batch_ms=LONG_MS)
    names = [
        client.batches.create(
            model=MODEL, src=[{"contents": f"ask {i}"}], config={"display_name": f"b{i}"}
        ).name
        for i in range(3)
    ]
    pager = client.batches.list(config={"page_size": 1})
    assert len(pager.page) == 1
    assert [b.name for b in pager] == names[::-1]  # newest first, one page at a time
    listed = httpx.get(f"{sim.url}/v1beta/batches", params={"pageSize": 2}, timeout=10).json()
    assert [b["name"] for b in listed["operations"]] == names[:0:-1] and "nextPageToken" in listed
    client.batches.cancel(name=names[2])
    cancelled = client.batches.get(name=names[2])
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED and cancelled.end_time is not None
    assert httpx.post(f"{sim.url}/v1beta/{names[2]}:cancel", timeout=10).json() == {}  # again: no change
    assert client.batches.get(name=names[1]).state == types.JobState.JOB_STATE_PENDING
    deleted = client.batches.delete(name=names[0])
    assert deleted.name is None and deleted.done is None  # Google answers {}
    with pytest.raises(genai_errors.APIError) as gone:
        client.batches.get(name=names[0])
    assert gone.value.code == 404 and gone.value.status == "NOT_FOUND"
    assert gone.value.message == "Requested entity was not found."
    for call in (client.batches.cancel, client.batches.delete):
        with pytest.raises(genai_errors.APIError) as unknown:
            call(name="batches/nosuchbatch")
        assert unknown.value.code == 404
    assert [b.name for b in client.batches.list()] == names[:0:-1]
    google_error(httpx.put(f"{sim.url}/v1beta/batches", timeout=10), 405, "METHOD_NOT_ALLOWED")
    stats = sim.stats()
    assert stats["batches_created"] == 3 and stats["batches_cancelled"] == 1 and stats["batches_deleted"] == 1
    assert stats["batches_succeeded"] == 0 and stats["stored_batches"] == 2


def test_file_batch_writes_its_responses_to_a_generated_file(sim: Simulator) -> None:
    client = genai_client(sim)
    lines = [
        {"key": "alpha", "request": {"contents": [{"parts": [{"text": "from a file"}], "role": "user"}]}},
        {"key": "beta", "request": {"contents": [{"parts": [{"text": "and another"}]}]}},
    ]
    jsonl = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    uploaded = client.files.upload(file=io.BytesIO(jsonl), config={"mime_type": "application/jsonl"})
    created = client.batches.create(model=MODEL, src=uploaded.name)
    assert created.state == types.JobState.JOB_STATE_PENDING
    assert client.files.get(name=uploaded.name).source == types.FileSource.UPLOADED
    assert len(list(client.files.list())) == 1  # no responses file before the batch is done
    done, _ = poll(lambda: client.batches.get(name=created.name), lambda b: b.done)
    batch_id = created.name.removeprefix("batches/")
    assert done.dest.file_name == f"files/batch-{batch_id}" and done.dest.inlined_responses is None
    responses = client.files.get(name=done.dest.file_name)
    assert responses.source == types.FileSource.GENERATED and responses.mime_type == "application/jsonl"
    written = [orjson.loads(line) for line in client.files.download(file=done.dest.file_name).splitlines()]
    assert [line["key"] for line in written] == ["alpha", "beta"]
    direct = client.models.generate_content(model=MODEL, contents="from a file")
    assert written[0]["response"]["candidates"][0]["content"]["parts"][0]["text"] == direct.text
    raw = httpx.get(f"{sim.url}/v1beta/{created.name}", timeout=10).json()
    assert (
        raw["response"]["responsesFile"] == raw["metadata"]["output"]["responsesFile"] == done.dest.file_name
    )
    with pytest.raises(genai_errors.APIError) as missing:
        client.batches.create(model=MODEL, src="files/nosuchfile")
    assert missing.value.code == 403 and "You do not have permission to access the File" in str(
        missing.value.message
    )


def test_embedding_batch_answers_the_embedding_paths_vectors(sim: Simulator) -> None:
    client = genai_client(sim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_embeddings is experimental in this SDK
        created = client.batches.create_embeddings(
            model=EMBED,
            src={"inlined_requests": {"contents": ["alpha", "beta"], "config": {"output_dimensionality": 4}}},
            config={"display_name": "vectors"},
        )
    assert created.state == types.JobState.JOB_STATE_PENDING and created.display_name == "vectors"
    done, _ = poll(lambda: client.batches.get(name=created.name), lambda b: b.done)
    vectors = [item.response.embedding.values for item in done.dest.inlined_embed_content_responses]
    direct = client.models.embed_content(
        model=EMBED, contents=["alpha", "beta"], config={"output_dimensionality": 4}
    )
    assert vectors == [e.values for e in direct.embeddings] and len(vectors[0]) == 4
    raw = httpx.get(f"{sim.url}/v1beta/{created.name}", timeout=10).json()
    assert raw["metadata"]["@type"].endswith("v1main.EmbedContentBatch")
    assert raw["response"]["@type"].endswith("v1main.EmbedContentBatchOutput")
    assert raw["response"]["inlinedResponses"]["inlinedResponses"][0]["response"]["usageMetadata"] == {
        "promptTokenCount": 2
    }
    assert sim.stats()["embedded_items"] == 4  # two in the batch, two direct


def test_batches_need_a_model_of_their_kind(sim: Simulator) -> None:
    sim.configure(any_model=False)  # as Google serves: only the listed models, each its methods
    try:
        client = genai_client(sim)
        with pytest.raises(genai_errors.APIError) as embedder:
            client.batches.create(model=EMBED, src=[{"contents": "hi"}])
        assert embedder.value.code == 404 and "not supported for batchGenerateContent" in str(
            embedder.value.message
        )
        with pytest.raises(genai_errors.APIError) as unknown:
            client.batches.create(model="gemini-0-unknown", src=[{"contents": "hi"}])
        assert unknown.value.code == 404
        assert client.batches.create(model=MODEL, src=[{"contents": "hi"}]).name
    finally:
        sim.configure(any_model=True)


# ---------------------------------------------------------------- Vertex AI batch prediction jobs


def test_vertex_batch_prediction_job_runs_to_success(sim: Simulator) -> None:
    client = vertex_client(sim)
    job = client.batches.create(model=MODEL, src="gs://bucket/input.jsonl")
    scope = f"projects/{PROJECT}/locations/{LOCATION}"
    assert job.name is not None and re.fullmatch(rf"{scope}/batchPredictionJobs/\d{{19}}", job.name)
    assert job.state == types.JobState.JOB_STATE_PENDING and job.model == f"publishers/google/models/{MODEL}"
    assert job.src.gcs_uri == ["gs://bucket/input.jsonl"] and job.dest.gcs_uri == "gs://bucket/input/dest"
    assert job.display_name is not None and job.display_name.startswith("genai_batch_job_")
    done, seen = poll(lambda: client.batches.get(name=job.name), lambda j: j.done)
    assert types.JobState.JOB_STATE_RUNNING in [j.state for j in seen]
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.start_time is not None and done.end_time is not None and done.start_time < done.end_time
    assert done.output_info.gcs_output_directory.startswith("gs://bucket/input/dest/prediction-model-")
    bigquery = client.batches.create(model=MODEL, src="bq://proj.dataset.table")
    assert bigquery.dest.bigquery_uri is not None and bigquery.dest.bigquery_uri.startswith(
        "bq://proj.dataset.table_dest_"
    )
    finished, _ = poll(lambda: client.batches.get(name=bigquery.name.rsplit("/", 1)[1]), lambda j: j.done)
    assert finished.output_info.bigquery_output_table == bigquery.dest.bigquery_uri.rsplit(".", 1)[1]
    raw = httpx.get(f"{sim.url}/v1beta1/{bigquery.name}", timeout=10).json()
    assert raw["outputInfo"]["bigqueryOutputDataset"] == "bq://proj.dataset"
    assert raw["state"] == "JOB_STATE_SUCCEEDED" and "error" not in raw
    assert sim.stats()["batches_succeeded"] == 2


def test_vertex_list_cancel_delete(sim: Simulator) -> None:
    client = vertex_client(sim)
    sim.configure(batch_ms=LONG_MS)
    names = [
        client.batches.create(
            model=MODEL, src=f"gs://bucket/in{i}.jsonl", config={"display_name": f"job{i}"}
        ).name
        for i in range(3)
    ]
    pager = client.batches.list(config={"page_size": 1})
    assert len(pager.page) == 1 and [j.name for j in pager] == names[::-1]
    assert list(genai_client(sim).batches.list()) == []  # the Gemini API has batches of its own
    client.batches.cancel(name=names[1])
    cancelled = client.batches.get(name=names[1])
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED and cancelled.error.code == 1
    deleted = client.batches.delete(name=names[0])
    assert deleted.done is True and deleted.name is not None and "/operations/" in deleted.name
    with pytest.raises(genai_errors.APIError) as gone:
        client.batches.get(name=names[0])
    assert gone.value.code == 404 and gone.value.status == "NOT_FOUND"
    refused = httpx.post(
        f"{sim.url}/v1beta1/projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs",
        json={"model": f"publishers/google/models/{MODEL}", "displayName": "x", "inputConfig": {}},
        timeout=10,
    )
    assert "inputConfig" in google_error(refused, 400, "INVALID_ARGUMENT")
    assert sim.stats()["batches_cancelled"] == 1 and sim.stats()["stored_batches"] == 2


# ---------------------------------------------------------------- long-running operations (Veo)


def test_gemini_video_operation_polls_to_a_downloadable_video(sim: Simulator) -> None:
    client = genai_client(sim)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="only supported in Gemini Enterprise"):
        warnings.simplefilter("ignore")  # the prompt argument is deprecated in favour of source
        client.models.generate_videos(model=VEO, prompt="a cat")  # google-genai 3.6 sends none here
    started = httpx.post(
        f"{sim.url}/v1beta/models/{VEO}:predictLongRunning",
        json={"instances": [{"prompt": "a cat on a skateboard"}], "parameters": {"sampleCount": 2}},
        timeout=10,
    ).json()
    assert re.fullmatch(rf"models/{VEO}/operations/[a-z0-9]{{12}}", started["name"])
    operation = client.operations.get(types.GenerateVideosOperation(name=started["name"]))
    assert not operation.done and operation.response is None
    operation, _ = poll(lambda: client.operations.get(operation), lambda o: o.done)
    videos = operation.response.generated_videos
    assert len(videos) == 2 and operation.result == operation.response
    assert videos[0].video.uri.startswith("https://") and ":download?alt=media" in videos[0].video.uri
    data = client.files.download(file=videos[0].video)
    assert data == video_bytes(VEO, "a cat on a skateboard", 0) and data[4:8] == b"ftyp"
    assert client.files.download(file=videos[1]) == video_bytes(VEO, "a cat on a skateboard", 1)
    raw = httpx.get(f"{sim.url}/v1beta/{started['name']}", timeout=10).json()
    assert raw["response"]["@type"].endswith("v1beta.PredictLongRunningResponse")
    with pytest.raises(genai_errors.APIError) as unknown:
        client.operations.get(types.GenerateVideosOperation(name=f"models/{VEO}/operations/nope"))
    assert unknown.value.code == 404 and unknown.value.status == "NOT_FOUND"
    refused = httpx.post(
        f"{sim.url}/v1beta/models/{VEO}:predictLongRunning", json={"instances": []}, timeout=10
    )
    google_error(refused, 400, "INVALID_ARGUMENT")
    stats = sim.stats()
    assert stats["operations_started"] == 1 and stats["operations_polled"] >= 3 and stats["stored_files"] == 2


def test_vertex_video_operation_through_fetch_predict_operation(sim: Simulator) -> None:
    client = vertex_client(sim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the prompt argument is deprecated in favour of source
        operation = client.models.generate_videos(model=VEO, prompt="a dog", config={"number_of_videos": 1})
        stored = client.models.generate_videos(
            model=VEO, prompt="a dog", config={"number_of_videos": 2, "output_gcs_uri": "gs://bucket/videos"}
        )
        filtered = client.models.generate_videos(model=VEO, prompt="a [[blocked]] dog")
    scope = f"projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{VEO}"
    assert re.fullmatch(rf"{scope}/operations/[0-9a-f-]{{36}}", operation.name) and not operation.done
    operation, _ = poll(lambda: client.operations.get(operation), lambda o: o.done)
    (video,) = operation.response.generated_videos
    assert video.video.video_bytes == video_bytes(VEO, "a dog", 0) and video.video.mime_type == "video/mp4"
    # Each was started a little after the one before: polled to its own end, not assumed done.
    stored, _ = poll(lambda: client.operations.get(stored), lambda o: o.done)
    operation_id = stored.name.rsplit("/", 1)[1]
    assert [v.video.uri for v in stored.response.generated_videos] == [
        f"gs://bucket/videos/{operation_id}/sample_{i}.mp4" for i in range(2)
    ]
    filtered, _ = poll(lambda: client.operations.get(filtered), lambda o: o.done)
    assert filtered.response.generated_videos is None and filtered.response.rai_media_filtered_count == 1
    unknown = types.GenerateVideosOperation(name=f"{scope}/operations/00000000-0000-0000-0000-000000000000")
    with pytest.raises(genai_errors.APIError) as missing:
        client.operations.get(unknown)
    assert missing.value.code == 404 and missing.value.status == "NOT_FOUND"
    fetched = httpx.post(
        f"{sim.url}/v1beta1/{scope}:fetchPredictOperation", json={"operationName": operation.name}, timeout=10
    ).json()
    assert fetched["done"] is True and fetched["response"]["videos"][0]["mimeType"] == "video/mp4"
    assert httpx.get(f"{sim.url}/v1beta1/{operation.name}", timeout=10).json() == fetched
    assert sim.stats()["operations_started"] == 3 and sim.stats()["stored_files"] == 0  # Vertex answers bytes


def test_reset_drops_batches_and_operations(sim: Simulator) -> None:
    client = genai_client(sim)
    sim.configure(batch_ms=LONG_MS, operation_ms=LONG_MS)
    batch = client.batches.create(model=MODEL, src=[{"contents": "kept until reset"}])
    started = httpx.post(
        f"{sim.url}/v1beta/models/{VEO}:predictLongRunning", json={"instances": [{"prompt": "x"}]}, timeout=10
    ).json()
    assert sim.stats()["stored_batches"] == 1 and sim.stats()["stored_operations"] == 1
    sim.reset()
    assert sim.stats()["stored_batches"] == 0 and sim.stats()["stored_operations"] == 0
    google_error(httpx.get(f"{sim.url}/v1beta/{batch.name}", timeout=10), 404, "NOT_FOUND")
    google_error(httpx.get(f"{sim.url}/v1beta/{started['name']}", timeout=10), 404, "NOT_FOUND")
    bad = httpx.post(f"{sim.url}/_simulator/config", json={"batch_ms": -1}, timeout=10)
    assert bad.status_code == 400


# ---------------------------------------------------------------- the books, pure


def test_job_book_follows_the_clock_and_settles_each_record_once() -> None:
    book: JobBook[StoredBatch] = JobBook(lambda b: b.name, capacity=2)
    batch = StoredBatch(
        "a", "", GENERATE, "models/m", None, created=10.0, starts=11.0, due=12.0, request_count=1
    )
    assert [batch.state(t) for t in (10.0, 11.0, 12.0)] == [PENDING, RUNNING, SUCCEEDED]
    assert batch.updated(10.5) == 10.0 and batch.updated(11.5) == 11.0 and batch.ended(11.5) is None
    book.put(batch)
    assert book.settle(lambda b: b.finished(11.9)) == []
    assert book.settle(lambda b: b.finished(12.0)) == [batch]
    assert book.settle(lambda b: b.finished(99.0)) == []  # once only
    cancelled = StoredBatch("b", "", GENERATE, "models/m", None, 10.0, 11.0, 12.0, 1, cancelled=10.5)
    assert cancelled.state(99.0) == CANCELLED and cancelled.ended(99.0) == 10.5
    book.put(cancelled)
    book.put(StoredBatch("c", "", GENERATE, "models/m", None, 10.0, 11.0, 12.0, 1))
    assert len(book) == 2 and not book.has("batches/a")  # the oldest went first
    assert [b.id for b in book.newest_first(lambda b: True)] == ["c", "b"]


def test_uploads_keep_their_bytes_only_when_small() -> None:
    files = FileBook()
    small = files.start("application/jsonl", None, None, None, 0.0)
    small.take(b"x" * 10)
    assert files.finish(small, 0.0).content == b"x" * 10
    declared = files.start("application/jsonl", KEPT_UPLOAD_BYTES + 1, None, None, 0.0)
    declared.take(b"y")
    assert declared.kept is None and files.finish(declared, 0.0).content is None
    grown = files.start("application/jsonl", None, None, None, 0.0)
    grown.take(b"z" * KEPT_UPLOAD_BYTES)
    grown.take(b"z")
    assert files.finish(grown, 0.0).content is None
