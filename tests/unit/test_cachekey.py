"""Cache keys, topic names and invalidation patterns (pure)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knowctl.policy import cachekey
from knowctl.policy.cachekey import ANSWER_FIELDS, BadPattern, cache_key, check_pattern, pattern_regex

BASE: dict[str, Any] = {
    "contents": [{"role": "user", "parts": [{"text": "Say hi"}]}],
    "systemInstruction": {"role": "user", "parts": [{"text": "be terse"}]},
    "generationConfig": {"temperature": 0.2, "maxOutputTokens": 32},
}
ARGS: dict[str, Any] = {
    "model": "gemini-2.5-flash",
    "family": "gemini",
    "streaming": False,
    "scope": "shared",
}

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def test_key_shape_and_prefixes() -> None:
    key = cache_key(BASE, **ARGS)
    prefix, model, digest = key.split(":")
    assert (prefix, model) == ("gen", "gemini-2.5-flash")
    assert len(digest) == 64 and int(digest, 16) >= 0
    topic_key = cache_key(BASE, **ARGS, topic="photosynthesis")
    assert topic_key.startswith("topic:photosynthesis:")
    assert cachekey.topic_of(topic_key) == "photosynthesis"
    assert cachekey.topic_of(key) is None


def test_key_ignores_order_whitespace_and_unrelated_fields() -> None:
    reordered = {k: BASE[k] for k in reversed(list(BASE))}
    reordered["generationConfig"] = {"maxOutputTokens": 32, "temperature": 0.2}
    assert cache_key(reordered, **ARGS) == cache_key(BASE, **ARGS)
    assert cache_key({**BASE, "labels": {"team": "x"}}, **ARGS) == cache_key(BASE, **ARGS)


@pytest.mark.parametrize(
    "change",
    [{"model": "gemini-2.5-pro"}, {"family": "vertex"}, {"streaming": True}, {"scope": "user:alice"}],
)
def test_key_changes_with_call_attributes(change: dict[str, Any]) -> None:
    assert cache_key(BASE, **{**ARGS, **change}) != cache_key(BASE, **ARGS)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(ANSWER_FIELDS), a=json_values, b=json_values)
def test_requests_differing_in_any_answer_field_never_share_a_key(field: str, a: Any, b: Any) -> None:
    first = copy.deepcopy(BASE)
    second = copy.deepcopy(BASE)
    first[field] = a
    second[field] = b
    same = cachekey.canonical(a) == cachekey.canonical(b)
    assert (cache_key(first, **ARGS) == cache_key(second, **ARGS)) == same


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(ANSWER_FIELDS), value=json_values)
def test_a_field_present_or_absent_never_shares_a_key(field: str, value: Any) -> None:
    without = {k: v for k, v in BASE.items() if k != field}
    assert cache_key({**without, field: value}, **ARGS) != cache_key(without, **ARGS)


@settings(max_examples=200, deadline=None)
@given(
    scope_a=st.text(min_size=1, max_size=20), scope_b=st.text(min_size=1, max_size=20), stream=st.booleans()
)
def test_scopes_and_stream_flag_separate_keys(scope_a: str, scope_b: str, stream: bool) -> None:
    a = cache_key(BASE, **{**ARGS, "scope": scope_a, "streaming": stream})
    b = cache_key(BASE, **{**ARGS, "scope": scope_b, "streaming": not stream})
    assert a != b


@pytest.mark.parametrize("name", ["photosynthesis", "Machine-Learning", "a.b_c-9", "x" * 100])
def test_valid_topics(name: str) -> None:
    assert cachekey.check_topic(name) == name


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "a*", "é", "x" * 101, "a:b", "{x}"])
def test_invalid_topics(name: str) -> None:
    with pytest.raises(ValueError, match="invalid topic name"):
        cachekey.check_topic(name)


def test_an_invalid_topic_never_makes_a_key() -> None:
    with pytest.raises(ValueError):
        cache_key(BASE, **ARGS, topic="a*b")


@pytest.mark.parametrize(
    ("pattern", "key", "hit"),
    [
        ("topic:*", "topic:photosynthesis:abc", True),
        ("topic:photosynthesis:*", "topic:photosynthesis:abc", True),
        ("topic:photosynthesis:*", "topic:photosynthesis-2:abc", False),
        ("gen:gemini-2.5-flash:*", "gen:gemini-2.5-flash:00ff", True),
        ("gen:*", "topic:x:1", False),
        ("topic:?:*", "topic:a:1", True),
        ("topic:?:*", "topic:ab:1", False),
        ("*", "anything:at:all", True),
        ("gen:m:abc", "gen:m:abc", True),
        ("gen:m:abc", "gen:m:abcd", False),
    ],
)
def test_pattern_matching(pattern: str, key: str, hit: bool) -> None:
    assert (pattern_regex(pattern).fullmatch(key) is not None) == hit


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("", "non-empty"),
        ("x" * 257, "longer than"),
        ("topic:[ab]*", "contains"),
        ("topic:\\*", "contains"),
        ("topic:{x}", "contains"),
        ("topic *", "contains"),
        ("topic:^", "contains"),
        ("topic:**", "'\\*\\*'"),
        ("*a*b*c*d*e*f*g*h*i", "wildcards"),
    ],
)
def test_bad_patterns_are_refused_clearly(pattern: str, why: str) -> None:
    with pytest.raises(BadPattern, match=why):
        check_pattern(pattern)
