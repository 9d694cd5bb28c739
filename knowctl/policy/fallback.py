"""Model fallback chains: when no deployment of the asked model has room, the next model in
its chain may serve the call instead (``gemini-2.5-pro -> gemini-2.5-flash``), in an order of
remedies chosen per priority: a stale copy, a fallback model, the wait queue; a 429 last.

Pure code: which remedies, in which order, and the call as it reads for another model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from knowctl.policy.paths import ApiCall, Surface
from knowctl.policy.priority import Priority

Remedy = Literal["stale", "fallback", "queue"]
DEFAULT_ORDER: tuple[Remedy, ...] = ("stale", "fallback", "queue")
# A request header that turns fallback off for one call: it waits or gets a 429 instead.
OPT_OUT_HEADER = "x-knowctl-fallback"
MODEL_HEADER = b"x-knowctl-model"  # in an answer a fallback model served: which one
_MODEL_SEGMENT = re.compile(r"/models/[^/:]+(?=:)")


@dataclass(frozen=True, slots=True)
class Fallbacks:
    """The chains (model -> the models to try next, in order) and the remedies' order per
    priority (DEFAULT_ORDER where none is set)."""

    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    order: Mapping[Priority, tuple[Remedy, ...]] = field(default_factory=dict)

    def remedies(self, priority: Priority) -> tuple[Remedy, ...]:
        return self.order.get(priority, DEFAULT_ORDER)

    def chain(self, model: str | None, headers: Mapping[str, str]) -> tuple[str, ...]:
        """The models that may serve a call to ``model`` instead, unless the caller opted out."""
        if model is None or headers.get(OPT_OUT_HEADER, "").strip().lower() in ("off", "false", "0", "no"):
            return ()
        return tuple(m for m in self.chains.get(model, ()) if m != model)


def check_chains(chains: Mapping[str, Sequence[str]]) -> None:
    """Refuse chains that name a model twice (a loop would try it again)."""
    for model, chain in chains.items():
        if len(set(chain)) != len(chain) or model in chain:
            raise ValueError(
                f"the fallback chain of {model} names a model twice: {model} -> {' -> '.join(chain)}"
            )


def retarget(
    call: ApiCall, raw_path: str, payload: dict[str, Any] | None, model: str
) -> tuple[ApiCall, str, bytes | None]:
    """``call`` as it reads for ``model``: its path (the models surface names the model there)
    or its body (interactions and the OpenAI endpoint name it in ``model``: the new body, else
    None for the same)."""
    moved = dataclasses.replace(call, model=model)
    if call.surface is Surface.MODELS:
        return moved, _MODEL_SEGMENT.sub(f"/models/{model}", raw_path, count=1), None
    if payload is None:
        return moved, raw_path, None
    named = "agent" if call.surface is Surface.INTERACTIONS and "agent" in payload else "model"
    asked = payload.get(named)
    # Keep the caller's spelling: "models/..." or Vertex's "google/...".
    prefix = asked.rsplit("/", 1)[0] + "/" if isinstance(asked, str) and "/" in asked else ""
    return moved, raw_path, orjson.dumps({**payload, named: prefix + model})
