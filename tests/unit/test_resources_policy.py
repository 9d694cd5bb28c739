"""Which files a request body names: what the gateway checks the owner of before a call
goes upstream."""

from __future__ import annotations

from knowctl.policy.resources import MAX_DEPTH, named_files


def test_file_uris_in_every_surfaces_spelling_are_found() -> None:
    body = {
        "contents": [
            {
                "parts": [
                    {"fileData": {"fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc123"}}
                ]
            },
            {"parts": [{"file_data": {"file_uri": "files/def-4"}}, {"text": "files/not-a-uri"}]},
        ],
        "input": [{"type": "document", "uri": "http://127.0.0.1:8080/v1beta/files/ghi"}],
    }
    assert named_files(body) == {"files/abc123", "files/def-4", "files/ghi"}


def test_text_and_other_uris_name_no_file() -> None:
    body = {
        "contents": [
            {
                "parts": [
                    {"text": "see files/abc"},
                    {"fileData": {"fileUri": "gs://bucket/files/x/y"}},
                    {"fileData": {"fileUri": "gs://bucket/files/x"}},
                ]
            }
        ]
    }
    assert named_files(body) == set()


def test_the_search_is_bounded_in_depth() -> None:
    deep: dict[str, object] = {"fileUri": "files/deep"}
    for _ in range(MAX_DEPTH + 5):
        deep = {"nested": deep}
    assert named_files(deep) == set()
    assert named_files({"a": {"fileUri": "files/near"}}) == {"files/near"}


def test_a_batch_input_file_a_cache_and_an_operation_are_named() -> None:
    from knowctl.policy.resources import named_caches, named_operations

    assert named_files({"batch": {"inputConfig": {"fileName": "files/in-1"}}}) == {"files/in-1"}
    assert named_caches({"cachedContent": "projects/1/locations/l/cachedContents/c9"}) == {
        "cachedContents/c9"
    }
    assert named_caches({"cachedContent": "not a cache"}) == {"not a cache"}  # owned by nobody: refused
    assert named_operations(
        {"operationName": "projects/p/locations/l/publishers/google/models/veo/operations/o1"}
    ) == {"operations/o1"}
    assert named_operations({"contents": []}) == set()


def test_the_files_a_finished_job_made_are_found() -> None:
    from knowctl.policy.resources import produced_files

    answer = {
        "done": True,
        "response": {
            "generateVideoResponse": {
                "generatedSamples": [{"video": {"uri": "https://h/v1beta/files/vid1:download?alt=media"}}]
            }
        },
        "metadata": {"output": {"responsesFile": "files/batch-0123456789abcdef0123456789abcdef0123"}},
        "note": "files/ in prose",
    }
    assert produced_files(answer) == {"files/vid1", "files/batch-0123456789abcdef0123456789abcdef0123"}
