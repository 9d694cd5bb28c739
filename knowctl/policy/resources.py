"""The resources a request body names (files by ``fileData.fileUri`` or a batch's input
``fileName``, a context cache by ``cachedContent``, an operation by ``operationName``), so the
gateway can refuse a call that uses another tenant's before it goes upstream."""

from __future__ import annotations

import re
from typing import Any

# A Files API URI: https://…/v1beta/files/abc123, or files/abc123 (not gs://…/files/x: Cloud
# Storage objects are not the Files API's).
_NAMED = re.compile(r"(?:https?://[^/?#]+(?:/[^?#]*)?/v1(?:beta|alpha)?/)?(files/[a-z0-9][a-z0-9-]{0,63})")
# Keys whose string values are file URIs in the surfaces' bodies (Gemini's fileData, the
# Interactions API's and the SDK's spellings).
_URI_KEYS = frozenset({"fileUri", "file_uri", "uri", "fileName", "file_name"})
# How deep a body is searched: prompts nest parts in contents in a few levels, not hundreds.
MAX_DEPTH = 32


def named_files(payload: Any) -> set[str]:
    """Every ``files/{id}`` the body names as a file URI."""
    found: set[str] = set()
    stack: list[tuple[Any, int]] = [(payload, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            continue
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str):
                    if key in _URI_KEYS and (match := _NAMED.fullmatch(value)) is not None:
                        found.add(match.group(1))
                elif isinstance(value, dict | list):
                    stack.append((value, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node if isinstance(item, dict | list))
    return found


# A cache by its name: cachedContents/{id}, or Vertex's projects/…/cachedContents/{id}.
_CACHE = re.compile(r"(?:projects/[^/]+/locations/[^/]+/)?(cachedContents/[a-z0-9][a-z0-9-]{0,63})")


def named_caches(payload: Any) -> set[str]:
    """The context cache a generation body names (``cachedContent``), as cachedContents/{id}."""
    if not isinstance(payload, dict):
        return set()
    named = payload.get("cachedContent", payload.get("cached_content"))
    if not isinstance(named, str):
        return set()
    match = _CACHE.fullmatch(named)
    # A name that is not a cache's is kept whole: no owner has it, so it is refused.
    return {match.group(1) if match is not None else named}


_OPERATION = re.compile(r"(?:[^?#]*/)?(operations/[A-Za-z0-9][A-Za-z0-9_-]{0,127})")


def named_operations(payload: Any) -> set[str]:
    """The operation a poll names in its body (Vertex's fetchPredictOperation), as operations/{id}."""
    if not isinstance(payload, dict):
        return set()
    named = payload.get("operationName", payload.get("operation_name"))
    if not isinstance(named, str):
        return set()
    match = _OPERATION.fullmatch(named)
    return {match.group(1) if match is not None else named}


# A file named anywhere in an answer: files/{id}, alone or in a URI (…/files/{id}:download?alt=media).
_PRODUCED = re.compile(r"(?:^|/)(files/[a-z0-9][a-z0-9-]{0,63})(?=$|[:?#])")


def produced_files(answer: Any) -> set[str]:
    """Every file a finished job's answer names (a batch's ``responsesFile``, a video's
    ``uri``): what the job made, its owner's."""
    found: set[str] = set()
    stack: list[tuple[Any, int]] = [(answer, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            continue
        values = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for value in values:
            if isinstance(value, str):
                found.update(match.group(1) for match in _PRODUCED.finditer(value))
            elif isinstance(value, dict | list):
                stack.append((value, depth + 1))
    return found
