"""What makes a Gemini request body acceptable, before anything is spent on it."""

from __future__ import annotations

from typing import Any

from knowctl.policy.paths import Action


def body_problem(action: Action | None, body: Any) -> str | None:
    """A clear message for a body Google would refuse, or None when it is acceptable.

    Checked here rather than left to the upstream, so a bad request spends no quota and
    no upstream round trip, and the caller learns which field is wrong.
    """
    if not isinstance(body, dict):
        return "Invalid JSON payload: the request body must be a JSON object."
    if action in (Action.GENERATE, Action.STREAM):
        return _contents_problem(body.get("contents"), "contents")
    if action is Action.COUNT_TOKENS:
        if "contents" in body:
            return _contents_problem(body["contents"], "contents")
        inner = body.get("generateContentRequest")
        if isinstance(inner, dict):
            return _contents_problem(inner.get("contents"), "generateContentRequest.contents")
        return "* CountTokensRequest: contents is not specified"
    return None


def _contents_problem(contents: Any, field: str) -> str | None:
    if contents is None:
        return f"* GenerateContentRequest.{field}: contents is not specified"
    if not isinstance(contents, list):
        return f"Invalid JSON payload: '{field}' must be a list of Content objects."
    if not contents:
        return f"* GenerateContentRequest.{field}: contents is not specified"
    for index, item in enumerate(contents):
        if not isinstance(item, dict):
            return f"Invalid JSON payload: '{field}[{index}]' must be a Content object."
        parts = item.get("parts")
        if parts is not None and not isinstance(parts, list):
            return f"Invalid JSON payload: '{field}[{index}].parts' must be a list."
    return None
