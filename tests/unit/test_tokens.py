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
    assert tp.reservation(10, request("x", max_out=32), "input", 8192) == tp.Reservation(10)
    assert tp.reservation(10, request("x", max_out=32), "total", 8192) == tp.Reservation(42)
    assert tp.reservation(10, request("x"), "total", 100) == tp.Reservation(110)
    assert tp.reservation(10, request("x", max_out=True), "total", 100).tokens == 110  # a bool is no count
    assert tp.max_output_tokens({"generation_config": {"max_output_tokens": 7}}) == 7


def test_total_mode_reserves_what_answers_take_and_never_more_than_the_window() -> None:
    """A call without maxOutputTokens is admissible whenever its input fits: the answer's
    share is what the model's answers were seen to take, capped by the window; what the
    answer may take beyond that is reported, the bound on going over."""
    assert tp.reservation(100, request("x"), "total", 8192, cap=2000) == tp.Reservation(2000, 8192 - 1900)
    assert tp.reservation(100, request("x"), "total", 8192, likely_output=300, cap=2000) == tp.Reservation(
        400, 8192 - 300
    )
    explicit = tp.reservation(100, request("x", max_out=50), "total", 8192, likely_output=300, cap=2000)
    assert explicit == tp.Reservation(150, 0)  # the caller's own bound is never exceeded
    assert tp.reservation(3000, request("x"), "total", 8192, cap=2000).tokens == 3000  # input alone decides


def test_the_output_high_mark_rises_at_once_and_sinks_slowly() -> None:
    mark = tp.OutputHighMark()
    assert mark.value is None
    for tokens in (100, 400, 50):
        mark.observe(tokens)
    assert mark.value == 400 - (400 - 50) // 20
    for _ in range(200):
        mark.observe(50)
    assert 50 <= mark.value < 70
    assert tp.output_tokens({"promptTokenCount": 7, "totalTokenCount": 30}) == 23
    assert tp.output_tokens({"candidatesTokenCount": 3}) is None


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
