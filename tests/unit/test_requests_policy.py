"""Request-body checks and Google's error shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from knowctl.errors import error_body, parse_retry_delay, retry_after_header, retry_delay_text, retry_info
from knowctl.policy.paths import Action
from knowctl.policy.requests import body_problem

GOOD = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.mark.parametrize("action", [Action.GENERATE, Action.STREAM, Action.COUNT_TOKENS])
def test_good_bodies_pass(action: Action) -> None:
    assert body_problem(action, GOOD) is None


def test_count_tokens_accepts_generate_content_request() -> None:
    assert body_problem(Action.COUNT_TOKENS, {"generateContentRequest": GOOD, "model": "m"}) is None
    assert body_problem(Action.COUNT_TOKENS, {"model": "m"}) is not None


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ([], "JSON object"),
        ("text", "JSON object"),
        ({}, "contents is not specified"),
        ({"contents": []}, "contents is not specified"),
        ({"contents": "hi"}, "must be a list"),
        ({"contents": ["hi"]}, "contents[0]"),
        ({"contents": [{"parts": "hi"}]}, "parts"),
    ],
)
def test_bad_bodies_named(body: Any, needle: str) -> None:
    problem = body_problem(Action.GENERATE, body)
    assert problem is not None and needle in problem


def test_other_actions_need_only_an_object() -> None:
    assert body_problem(None, {"content": {"parts": [{"text": "x"}]}}) is None
    assert body_problem(None, [1]) is not None


def test_error_shape() -> None:
    body = orjson.loads(error_body(429, "slow down", details=[retry_info(2.5)]))
    assert body == {
        "error": {
            "code": 429,
            "message": "slow down",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}],
        }
    }
    assert orjson.loads(error_body(404, "no"))["error"]["status"] == "NOT_FOUND"


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_retry_delay_round_trips(seconds: float) -> None:
    body = error_body(429, "x", details=[retry_info(seconds)])
    parsed = parse_retry_delay(body)
    assert parsed is not None and abs(parsed - seconds) < 0.001
    assert int(retry_after_header(seconds)) >= max(1, seconds)


def test_retry_delay_from_array_framing_and_garbage() -> None:
    inner = orjson.loads(error_body(429, "x", details=[retry_info(15)]))
    assert parse_retry_delay(orjson.dumps([inner])) == 15
    assert parse_retry_delay(b"not json") is None
    assert parse_retry_delay(b'{"error": {"details": [{"@type": "x"}]}}') is None
    assert retry_delay_text(15) == "15s"
