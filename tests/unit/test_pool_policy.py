"""The pure parts of the upstream pool: candidates and targets, the choice among lanes,
learned capacity, the retry budget, service tiers and fallback chains."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from knowctl.policy.capacity import LearnedLimit
from knowctl.policy.fallback import DEFAULT_ORDER, Fallbacks, check_chains, retarget
from knowctl.policy.paths import ApiCall, Family, parse_path
from knowctl.policy.pool import Deployment, Pool, Served
from knowctl.policy.priority import Priority
from knowctl.policy.quota import Limits, QuotaConfig
from knowctl.policy.retries import RetryBudget
from knowctl.policy.tiers import downgraded, with_tier
from knowctl.policy.windows import headroom

GEMINI = "/v1beta/models/gemini-2.5-pro:generateContent"
VERTEX = (
    "/v1/projects/theirs/locations/us-east5/publishers/google/models/gemini-2.5-pro:streamGenerateContent"
)


def call(path: str) -> ApiCall:
    found = parse_path(path)
    assert found is not None
    return found


def test_candidates_by_family_model_and_order() -> None:
    pool = Pool(
        [
            Deployment(
                "eu",
                Family.VERTEX,
                1,
                {"gemini-2.5-pro": Served("gemini-2.5-pro")},
                project="p",
                location="europe-west4",
            ),
            Deployment("key", Family.GEMINI, 1, {"gemini-2.5-pro": Served("gemini-2.5-pro", Limits(rpm=5))}),
            Deployment("pt", Family.VERTEX, 0, None, project="p", location="us-central1"),
        ],
        QuotaConfig(),
    )
    assert [d.name for d in pool.candidates(call(VERTEX))] == ["pt", "eu"]
    assert [d.name for d in pool.candidates(call(GEMINI))] == ["key"]
    assert pool.candidates(call("/v1beta/models/other:generateContent")) == ()
    [rpm] = pool.windows(pool.deployments[1], "gemini-2.5-pro")
    assert (rpm.name, rpm.limit, rpm.length_s) == ("rpm", 5, 60.0)
    assert pool.windows(pool.deployments[2], "gemini-2.5-pro") == ()  # declares nothing
    with pytest.raises(ValueError, match="unique"):
        Pool([Deployment("a"), Deployment("a")], QuotaConfig())


def test_a_vertex_deployment_takes_the_call_to_its_own_project_location_and_name() -> None:
    d = Deployment(
        "eu",
        Family.VERTEX,
        models={"gemini-2.5-pro": Served("gemini-2.5-pro-002")},
        project="mine",
        location="europe-west4",
    )
    c = call(VERTEX)
    assert d.origin(c) == "https://europe-west4-aiplatform.googleapis.com"
    assert d.target_path(c, VERTEX) == (
        "/v1/projects/mine/locations/europe-west4/publishers/google/models/gemini-2.5-pro-002:streamGenerateContent"
    )
    glob = Deployment("g", Family.VERTEX, project="mine", location="global")
    assert glob.origin(c) == "https://aiplatform.googleapis.com"
    legacy = Deployment("default")  # the pool of one: as the caller addressed it
    assert legacy.origin(c) == "https://us-east5-aiplatform.googleapis.com" and legacy.serves(c)
    assert legacy.target_path(c, VERTEX) == VERTEX


def test_headroom_is_the_smallest_share_a_window_has_left() -> None:
    assert headroom([4, 10], [10, 100]) == pytest.approx(0.6)
    assert headroom([], []) == 1.0  # no windows: nothing to fill


def test_the_retry_budget_is_a_share_of_the_calls_in_flight() -> None:
    budget = RetryBudget()
    for _ in range(50):
        budget.started()
    assert budget.may_retry(0) and not budget.may_retry(budget.attempts)
    for _ in range(10):  # 20% of 50
        budget.retrying(+1)
    assert not budget.may_retry(0)
    budget.retrying(-1)
    assert budget.may_retry(1)
    idle = RetryBudget()
    idle.started()
    assert idle.may_retry(0)  # the minimum holds for a quiet gateway


def test_service_tiers_only_where_the_caller_chose_none() -> None:
    body = orjson.dumps({"contents": []})
    tiered = with_tier(Family.GEMINI, call(GEMINI).surface, body, {}, "flex")
    assert tiered is not None and orjson.loads(tiered[0])["serviceTier"] == "flex" and tiered[1] == {}
    own = orjson.dumps({"contents": [], "serviceTier": "priority"})
    assert with_tier(Family.GEMINI, call(GEMINI).surface, own, {}, "flex") is None
    assert with_tier(Family.VERTEX, call(VERTEX).surface, body, {}, "priority") == (
        body,
        {"x-vertex-ai-llm-request-type": "shared", "x-vertex-ai-llm-shared-request-type": "priority"},
    )
    assert with_tier(Family.VERTEX, call(VERTEX).surface, body, {}, "dedicated") == (
        body,
        {"x-vertex-ai-llm-request-type": "dedicated"},
    )
    assert (
        with_tier(
            Family.VERTEX, call(VERTEX).surface, body, {"x-vertex-ai-llm-request-type": "shared"}, "flex"
        )
        is None
    )
    assert downgraded("priority", b"standard") and not downgraded("priority", b"priority")
    assert not downgraded("flex", b"standard")


def test_fallback_chains_and_the_call_for_another_model() -> None:
    fallbacks = Fallbacks({"pro": ("flash", "lite")}, {Priority.LOW: ("queue",)})
    assert fallbacks.chain("pro", {}) == ("flash", "lite")
    assert fallbacks.chain("pro", {"x-knowctl-fallback": "off"}) == ()
    assert fallbacks.chain("flash", {}) == ()
    assert fallbacks.remedies(Priority.LOW) == ("queue",)
    assert fallbacks.remedies(Priority.HIGH) == DEFAULT_ORDER
    moved, path, body = retarget(call(GEMINI), GEMINI, {"contents": []}, "gemini-2.5-flash")
    assert moved.model == "gemini-2.5-flash" and body is None
    assert path == "/v1beta/models/gemini-2.5-flash:generateContent"
    chat = call("/v1/projects/p/locations/global/endpoints/openapi/chat/completions")
    _, _, body = retarget(chat, "/x", {"model": "google/gemini-2.5-pro", "messages": []}, "gemini-2.5-flash")
    assert body is not None and orjson.loads(body)["model"] == "google/gemini-2.5-flash"
    with pytest.raises(ValueError, match="twice"):
        check_chains({"pro": ["flash", "pro"]})


def test_learned_capacity_starts_slow_backs_off_and_probes() -> None:
    learned = LearnedLimit(5.0)
    assert not learned.admitted(3, now=0.0, window_s=60)  # not full: nothing to learn
    assert learned.admitted(5, now=1.0, window_s=60) and learned.limit == 10  # slow start doubles
    assert not learned.admitted(10, now=30.0, window_s=60)  # at most once a window
    assert learned.admitted(10, now=61.0, window_s=60) and learned.limit == 20
    assert learned.refused(16, now=62.0) and learned.limit == pytest.approx(14.4)  # served 16: a bit less
    assert not learned.refused(16, now=62.1)  # a second 429 of the same burst: not lower again
    assert learned.refusals == 2 and not learned.probing
    assert not learned.admitted(14, now=100.0, window_s=60)  # within a window of the refusal
    assert learned.admitted(14, now=123.0, window_s=60) and learned.limit == pytest.approx(15.84)  # +10%
    assert LearnedLimit(0.4).units == 1


def test_a_call_crosses_families_only_when_allowed_and_as_the_deployments_own() -> None:
    vertex = Deployment("vx", Family.VERTEX, models={"gemini-2.5-pro": Served("gemini-2.5-pro")},
                        project="mine", location="us-central1", cross_family=True)  # fmt: skip
    gemini_call = call(GEMINI)
    assert vertex.serves(gemini_call) and vertex.bridged(gemini_call)
    assert not dataclasses.replace(vertex, cross_family=False).serves(gemini_call)
    assert not vertex.serves(call("/v1beta/models/gemini-2.5-pro:batchEmbedContents"))  # bodies differ
    assert vertex.target_path(gemini_call, GEMINI) == (
        "/v1/projects/mine/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
    )
    assert vertex.as_sent(gemini_call).family is Family.VERTEX
    assert vertex.bridge_body(gemini_call, {"contents": [{"parts": []}]}) == {
        "contents": [{"role": "user", "parts": []}]
    }
    assert vertex.bridge_body(gemini_call, {"contents": [{"role": "model", "parts": []}]}) is None
    studio = Deployment("key", Family.GEMINI, cross_family=True)
    vertex_call = call(VERTEX)
    assert studio.target_path(vertex_call, VERTEX) == "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    assert studio.bridge_body(vertex_call, {"contents": [], "labels": {"team": "a"}}) == {"contents": []}
    assert not studio.bridged(call(GEMINI)) and studio.bridge_body(call(GEMINI), {"labels": {}}) is None
