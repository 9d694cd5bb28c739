"""Helpers for tests that drive the official google-genai client: its error's status, and
waiting for a job the simulator finishes after a delay."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from google.genai import errors

T = TypeVar("T")


def status_of(call: Callable[[], Any]) -> int:
    """The HTTP status of the APIError ``call`` raises (it must raise one)."""
    with pytest.raises(errors.APIError) as refused:
        call()
    return int(refused.value.code)


def poll(fetch: Callable[[], T], finished: Callable[[T], bool], timeout: float = 10.0) -> T:
    """Fetch until ``finished``; the last answer."""
    found = fetch()
    deadline = time.monotonic() + timeout
    while not finished(found):
        assert time.monotonic() < deadline, f"not finished after {timeout} s: {found!r}"
        time.sleep(0.05)
        found = fetch()
    return found
