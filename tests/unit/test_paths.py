"""Path parsing: every family the SDKs use, and everything else refused."""

from __future__ import annotations

import pytest

from knowctl.policy.paths import Action, ApiCall, Family, Surface, allowed_methods, google_origin, parse_path
from knowctl.policy.wire import openai as openai_wire


@pytest.mark.parametrize(
    ("path", "family", "version", "model", "action"),
    [
        (
            "/v1/models/gemini-2.5-flash:generateContent",
            Family.GEMINI,
            "v1",
            "gemini-2.5-flash",
            "generateContent",
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            Family.GEMINI,
            "v1beta",
            "gemini-2.5-flash",
            "streamGenerateContent",
        ),
        (
            "/v1beta/models/gemini-2.0-flash-001:countTokens",
            Family.GEMINI,
            "v1beta",
            "gemini-2.0-flash-001",
            "countTokens",
        ),
        (
            "/v1beta/models/text-embedding-004:embedContent",
            Family.GEMINI,
            "v1beta",
            "text-embedding-004",
            "embedContent",
        ),
        ("/v1beta/models", Family.GEMINI, "v1beta", None, None),
        ("/v1beta/models/gemini-2.5-pro", Family.GEMINI, "v1beta", "gemini-2.5-pro", None),
        (
            "/v1beta1/projects/p-1/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent",
            Family.VERTEX,
            "v1beta1",
            "gemini-2.5-flash",
            "generateContent",
        ),
        (
            "/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-flash:countTokens",
            Family.VERTEX,
            "v1",
            "gemini-2.5-flash",
            "countTokens",
        ),
        (
            "/v1beta1/publishers/google/models/gemini-2.5-flash:streamGenerateContent",
            Family.EXPRESS,
            "v1beta1",
            "gemini-2.5-flash",
            "streamGenerateContent",
        ),
        ("/v1/publishers/google/models", Family.EXPRESS, "v1", None, None),
    ],
)
def test_known_paths(path: str, family: Family, version: str, model: str | None, action: str | None) -> None:
    call = parse_path(path)
    assert call is not None
    assert (call.family, call.version, call.model, call.action) == (family, version, model, action)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v2/models/gemini:generateContent",
        "/v1beta1/models/gemini:generateContent",  # v1beta1 is Vertex's, not the Gemini API's
        "/v1beta/models/gemini:generateContent/extra",
        "/v1beta/models/../secrets:generateContent",
        "/v1/projects/p/locations/l/publishers/other/models/m:generateContent",
        "/v1beta/models/gem ini:generateContent",
        "/v1beta/models/" + "a" * 200 + ":generateContent",
        "/v1beta/models/gemini:generate-content",
        "/api/unknown",
    ],
)
def test_other_paths_are_not_api_calls(path: str) -> None:
    assert parse_path(path) is None


def test_vertex_project_and_location() -> None:
    call = parse_path(
        "/v1/projects/my-proj/locations/europe-west4/publishers/google/models/m:generateContent"
    )
    assert call is not None and (call.project, call.location) == ("my-proj", "europe-west4")
    assert call.known_action is Action.GENERATE and call.generates


def test_methods() -> None:
    listing = parse_path("/v1beta/models")
    action = parse_path("/v1beta/models/m:embedContent")
    assert listing is not None and action is not None
    assert allowed_methods(listing) == ("GET",)
    assert allowed_methods(action) == ("POST",)
    assert action.known_action is None and not action.generates


@pytest.mark.parametrize(
    ("call", "origin"),
    [
        (ApiCall(Family.GEMINI, "v1", "m", "generateContent"), "https://generativelanguage.googleapis.com"),
        (
            ApiCall(Family.VERTEX, "v1", "m", "generateContent", "p", "us-central1"),
            "https://us-central1-aiplatform.googleapis.com",
        ),
        (
            ApiCall(Family.VERTEX, "v1", "m", "generateContent", "p", "global"),
            "https://aiplatform.googleapis.com",
        ),
        (ApiCall(Family.EXPRESS, "v1beta1", "m", "generateContent"), "https://aiplatform.googleapis.com"),
    ],
)
def test_google_origin(call: ApiCall, origin: str) -> None:
    assert google_origin(call) == origin


@pytest.mark.parametrize(
    ("path", "family", "resource", "action", "methods"),
    [
        ("/v1/interactions", Family.GEMINI, None, None, ("POST",)),
        ("/v1beta/interactions/v1_abc", Family.GEMINI, "v1_abc", None, ("GET", "DELETE")),
        ("/v1beta/interactions/v1_abc/cancel", Family.GEMINI, "v1_abc", "cancel", ("POST",)),
        ("/v1beta1/interactions", Family.EXPRESS, None, None, ("POST",)),
        ("/v1/projects/p/locations/global/interactions/x", Family.VERTEX, "x", None, ("GET", "DELETE")),
    ],
)
def test_interaction_paths(
    path: str, family: Family, resource: str | None, action: str | None, methods: tuple[str, ...]
) -> None:
    call = parse_path(path)
    assert call is not None and call.surface is Surface.INTERACTIONS
    assert (call.family, call.resource, call.action) == (family, resource, action)
    assert allowed_methods(call) == methods
    assert call.generates == (resource is None)
    assert call.route == ("interactions.create" if resource is None else call.route)


@pytest.mark.parametrize(
    ("path", "family", "resource", "generates", "embeds"),
    [
        ("/v1beta/openai/chat/completions", Family.GEMINI, "chat/completions", True, False),
        ("/v1/openai/embeddings", Family.GEMINI, "embeddings", False, True),
        ("/v1beta/openai/models", Family.GEMINI, "models", False, False),
        (
            "/v1/projects/p/locations/us-central1/endpoints/openapi/chat/completions",
            Family.VERTEX,
            "chat/completions",
            True,
            False,
        ),
        (
            "/v1/projects/p/locations/global/endpoints/openapi/embeddings",
            Family.VERTEX,
            "embeddings",
            False,
            True,
        ),
    ],
)
def test_openai_paths(path: str, family: Family, resource: str, generates: bool, embeds: bool) -> None:
    call = parse_path(path)
    assert call is not None and call.surface is Surface.OPENAI
    assert (call.family, call.resource) == (family, resource)
    assert (call.generates, call.embeds) == (generates, embeds)
    if family is Family.VERTEX:
        assert google_origin(call).endswith("aiplatform.googleapis.com")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/openai/chat",
        "/v1/projects/p/locations/l/endpoints/openapi/models",
        "/v1/projects/p/locations/l/endpoints/other/chat/completions",
        "/v1/interactions/a/b",
        "/v1/interactions/..",
    ],
)
def test_other_surface_paths_are_not_api_calls(path: str) -> None:
    assert parse_path(path) is None


@pytest.mark.parametrize(
    ("named", "model"),
    [
        ("gemini-2.5-flash", "gemini-2.5-flash"),
        ("models/m", "m"),
        ("google/gemini-2.5-pro", "gemini-2.5-pro"),
        ("", None),
        ("models/", None),
    ],
)
def test_openai_model_names(named: str, model: str | None) -> None:
    assert openai_wire.model_name({"model": named}) == model


@pytest.mark.parametrize(
    ("path", "action", "resource", "methods"),
    [
        ("/upload/v1beta/files", "upload", None, ("POST",)),
        ("/v1beta/files", None, None, ("GET",)),
        ("/v1/files/abc123", None, "files/abc123", ("GET", "DELETE")),
        ("/download/v1beta/files/abc-1:download", "download", "files/abc-1", ("GET",)),
        ("/v1beta/files/abc-1:download", "download", "files/abc-1", ("GET",)),  # as google-genai sends it
    ],
)
def test_file_paths(path: str, action: str | None, resource: str | None, methods: tuple[str, ...]) -> None:
    call = parse_path(path)
    assert call is not None and call.surface is Surface.FILES
    assert (call.action, call.resource, allowed_methods(call)) == (action, resource, methods)
    assert not call.spends_quota and not call.generates


@pytest.mark.parametrize(
    "path",
    [
        "/upload/v1beta/files/abc",
        "/download/v1beta/files/abc",
        "/v1beta/files/ABC",
        "/v1beta/files/a/b",
    ],
)
def test_malformed_file_paths_are_not_api_calls(path: str) -> None:
    assert parse_path(path) is None


@pytest.mark.parametrize(
    ("path", "surface", "resource", "action", "methods"),
    [
        ("/v1beta/batches", Surface.BATCHES, None, None, ("GET", "POST")),
        ("/v1beta/batches/b-1", Surface.BATCHES, "batches/b-1", None, ("GET", "DELETE")),
        ("/v1beta/batches/b-1:cancel", Surface.BATCHES, "batches/b-1", "cancel", ("POST",)),
        (
            "/v1/projects/p/locations/l/batchPredictionJobs/42",
            Surface.BATCHES,
            "batchPredictionJobs/42",
            None,
            ("GET", "DELETE"),
        ),
        ("/v1beta/models/veo-3/operations/op9", Surface.OPERATIONS, "operations/op9", None, ("GET",)),
        (
            "/v1beta1/projects/p/locations/l/publishers/google/models/veo/operations/7",
            Surface.OPERATIONS,
            "operations/7",
            None,
            ("GET",),
        ),
        ("/v1beta/cachedContents/c1", Surface.CACHES, "cachedContents/c1", None, ("GET", "PATCH", "DELETE")),
        ("/v1/projects/p/locations/l/cachedContents", Surface.CACHES, None, None, ("GET", "POST")),
    ],
)
def test_owned_resource_paths(
    path: str, surface: Surface, resource: str | None, action: str | None, methods: tuple[str, ...]
) -> None:
    call = parse_path(path)
    assert call is not None
    assert (call.surface, call.resource, call.action, allowed_methods(call)) == (
        surface,
        resource,
        action,
        methods,
    )
    assert not call.spends_quota


def test_an_owned_name_is_what_every_spelling_shares() -> None:
    from knowctl.policy.paths import owned_name

    assert owned_name("models/veo-3/operations/op9") == "operations/op9"
    assert owned_name("projects/123/locations/l/cachedContents/c1") == "cachedContents/c1"
    assert owned_name("files/abc") == "files/abc"
