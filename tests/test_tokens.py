"""Token estimates and actual counts (pure), checked against the simulator's own rule."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from knowctl.policy import tokens as tp
from knowctl.simulator import answers


def request(*texts: str, system: str | None = None, max_out: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": t} for t in texts]}]}
    if system is not None:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if max_out is not None:
        body["generationConfig"] = {"maxOutputTokens": max_out}
    return body


def test_bytes_divided_by_four_rounded_up() -> None:
    assert tp.input_estimate(request("abcd")) == 1
    assert tp.input_estimate(request("abcde")) == 2
    assert tp.input_estimate(request("ab", "cd", system="efgh")) == 2
    assert tp.input_estimate(request("é" * 3)) == 2  # 6 UTF-8 bytes


def test_at_least_one_token() -> None:
    assert tp.input_estimate(request("")) == 1
    assert tp.input_estimate(None) == 1
    assert tp.input_estimate({"contents": "not a list"}) == 1


def test_other_parts_and_odd_shapes_are_ignored() -> None:
    body = {
        "contents": [
            {"parts": [{"inlineData": {"data": "AAAA"}}, {"text": "abcdefgh"}, "junk", {"text": 5}]},
            "not a content",
        ],
        "system_instruction": {"parts": [{"text": "abcd"}]},
    }
    assert tp.prompt_bytes(body) == 12
    assert tp.input_estimate({"contents": {"parts": [{"text": "x" * 9}]}}) == 3  # a single Content


def test_other_divisors() -> None:
    assert tp.input_estimate(request("x" * 10), 3) == 4
    assert tp.input_estimate(request("x" * 10), 2.5) == 4
    assert tp.input_estimate(request("x" * 11), 2.5) == 5
    with pytest.raises(ValueError):
        tp.input_estimate(request("x"), 0)


@given(
    texts=st.lists(st.text(max_size=40), min_size=1, max_size=5),
    system=st.none() | st.text(max_size=40),
)
def test_same_count_as_the_simulator(texts: list[str], system: str | None) -> None:
    body = request(*texts, system=system)
    assert tp.input_estimate(body, 4.0) == answers.prompt_tokens(answers.prompt_texts(body))


def test_total_mode_reserves_the_answer_too() -> None:
    assert tp.reservation(10, request("x", max_out=32), "input", 8192) == 10
    assert tp.reservation(10, request("x", max_out=32), "total", 8192) == 42
    assert tp.reservation(10, request("x"), "total", 100) == 110
    assert tp.reservation(10, request("x", max_out=True), "total", 100) == 110  # a bool is no count
    assert tp.max_output_tokens({"generation_config": {"max_output_tokens": 7}}) == 7


def test_actual_tokens() -> None:
    usage = {"promptTokenCount": 7, "candidatesTokenCount": 3, "totalTokenCount": 10}
    assert tp.actual_tokens(usage, "input") == 7
    assert tp.actual_tokens(usage, "total") == 10
    parts = {"promptTokenCount": 7, "candidatesTokenCount": 3, "thoughtsTokenCount": 5}
    assert tp.actual_tokens(parts, "total") == 15
    assert tp.actual_tokens(None, "input") is None
    assert tp.actual_tokens({}, "input") is None
    assert tp.actual_tokens({"promptTokenCount": -1}, "input") is None
    assert tp.actual_tokens({"candidatesTokenCount": 3}, "total") is None
