"""The simulator's model catalogue: the models it serves, what each answers, how each is described."""

from __future__ import annotations

import re
from typing import Any

from knowctl.policy.paths import Family
from knowctl.simulator.answers import BadRequest

# Models the Gemini API serves (its models page, mid-2026), and the aliases it resolves.
MODELS = (
    "gemini-3.5-flash",
    "gemini-3.1-pro-preview",
    "gemini-3.1-flash-lite",
    "gemini-3-flash-preview",
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-pro-latest",
    "gemini-flash-latest",
    "gemini-flash-lite-latest",
    "gemini-embedding-001",
    "veo-3.1-generate-preview",
    "veo-3.0-generate-001",
)
GENERATE_METHODS = ("generateContent", "streamGenerateContent", "countTokens", "batchGenerateContent")
EMBED_METHODS = ("embedContent", "batchEmbedContents", "countTokens", "asyncBatchEmbedContent")
VIDEO_METHODS = ("predictLongRunning",)  # Veo: a long-running operation per call
# Methods told apart by model kind; any other action on a listed model goes on to its handler
# (Vertex's fetchPredictOperation among them: it polls, on any model that started one).
MODEL_METHODS = frozenset(GENERATE_METHODS + EMBED_METHODS + VIDEO_METHODS)
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")


def supported_methods(model: str) -> tuple[str, ...]:
    """What Google's model of that name answers: embedding models embed, Veo models make videos
    (long-running), the others generate."""
    if "embedding" in model:
        return EMBED_METHODS
    return VIDEO_METHODS if model.startswith("veo-") else GENERATE_METHODS


def model_description(family: Family, model: str) -> dict[str, Any]:
    """One entry of a model listing (or the answer to a GET of the model) in the family's naming."""
    prefix = "models/" if family is Family.GEMINI else "publishers/google/models/"
    return {
        "name": prefix + model,
        "version": "001",
        "displayName": f"{model} (knowctl simulator)",
        "description": "A development/test stand-in served by knowctl simulate, not Google.",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": list(supported_methods(model)),
    }


def check_models(value: Any) -> tuple[str, ...]:
    """A model list from a flag or the control endpoint (raises :class:`answers.BadRequest`)."""
    if isinstance(value, str):
        value = [name.strip() for name in value.split(",") if name.strip()]
    if not isinstance(value, list | tuple) or not value:
        raise BadRequest("models must be a non-empty list of model names")
    names: list[str] = []
    for name in value:
        if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name.removeprefix("models/")):
            raise BadRequest(f"models: {name!r} is not a model name such as gemini-2.5-flash")
        names.append(name.removeprefix("models/"))
    return tuple(dict.fromkeys(names))
