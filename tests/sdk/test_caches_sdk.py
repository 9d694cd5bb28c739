"""Context caches through the gateway, with the official google-genai client: created, read,
listed, updated and deleted by their creator alone, and usable by it alone."""

from __future__ import annotations

import pytest
from google import genai
from google.genai import types

from tests.gateway.test_gateway_security import new_key
from tests.sdk.test_files_sdk import client, daemons  # noqa: F401 (the module's two gateways)
from tests.support.fixtures import Gateway, Simulator
from tests.support.sdk import status_of

MODEL = "caches-model"
CONTENTS = [types.Content(role="user", parts=[types.Part(text="A long shared context. " * 200)])]


@pytest.fixture
def gateway(daemons: tuple[Gateway, Gateway, int]) -> Gateway:  # noqa: F811
    return daemons[0]


def create(c: genai.Client) -> types.CachedContent:
    return c.caches.create(model=MODEL, config={"contents": CONTENTS, "ttl": "300s", "display_name": "ctx"})


def test_a_cache_is_its_creators_alone(gateway: Gateway, simulator: Simulator) -> None:
    owner, stranger = client(gateway, new_key(gateway)), client(gateway, new_key(gateway))
    made = create(owner)
    assert made.name is not None and made.name.startswith("cachedContents/")
    assert owner.caches.get(name=made.name).name == made.name
    assert made.name in [c.name for c in owner.caches.list()]
    theirs = create(stranger)
    assert [c.name for c in stranger.caches.list()] == [theirs.name]  # nothing of the owner's
    assert status_of(lambda: stranger.caches.get(name=made.name)) == 403
    assert status_of(lambda: stranger.caches.update(name=made.name, config={"ttl": "600s"})) == 403
    assert status_of(lambda: stranger.caches.delete(name=made.name)) == 403
    longer = owner.caches.update(name=made.name, config={"ttl": "900s"})
    assert (
        longer.expire_time is not None
        and made.expire_time is not None
        and longer.expire_time > made.expire_time
    )
    owner.caches.delete(name=made.name)
    assert status_of(lambda: owner.caches.get(name=made.name)) in (403, 404)


def test_a_generation_uses_its_callers_cache_only(gateway: Gateway, simulator: Simulator) -> None:
    owner, stranger = client(gateway, new_key(gateway)), client(gateway, new_key(gateway))
    made = create(owner)
    assert made.name is not None and made.usage_metadata is not None
    before = simulator.stats()["served"]
    config = types.GenerateContentConfig(cached_content=made.name)
    assert (
        status_of(lambda: stranger.models.generate_content(model=MODEL, contents="and?", config=config))
        == 403
    )
    assert simulator.stats()["served"] == before  # refused before it went upstream
    answer = owner.models.generate_content(model=MODEL, contents="and?", config=config)
    assert answer.usage_metadata is not None
    assert answer.usage_metadata.cached_content_token_count == made.usage_metadata.total_token_count
    assert simulator.stats()["served"] == before + 1
