"""Planning with the request-field contract, as pure functions: which candidate can honour a field."""

from __future__ import annotations

import msgspec
import pytest

from router.config import ProviderConfig, RouteConfig
from router.policy import ExternalState, LocalState, Residency, plan_local_only, plan_with_fallbacks
from serving.contract import TOOL_FIELDS, Needs, lacking
from tests.router.conftest import policy

MODEL = "m-2024-08-06"
PROVIDERS = {
    name: msgspec.convert(
        {
            "name": name,
            "kind": kind,
            "base_url": "http://127.0.0.1:1",
            "region": region,
            "models": {MODEL: {"input_per_mtok": 1.0, "output_per_mtok": 1.0}},
        },
        ProviderConfig,
    )
    for name, kind, region in (
        ("oai", "openai", "eu-west"),
        ("claude", "anthropic", "eu-west"),
        ("us", "openai", "us-east"),
    )
}
ROUTE = msgspec.convert(
    {"alias": "chat", "local": "tiny", "fallbacks": [{"provider": p, "model": MODEL} for p in PROVIDERS]},
    RouteConfig,
)
EU = Residency(local_only=False, regions=frozenset({"eu-west"}))
#: a local model without a tool parser: the local route has the tool fields, this model lacks them
LOCAL = LocalState(model="tiny", healthy=True, breaker_open=False, overloaded=False, unsupported=TOOL_FIELDS)
TENANT = policy(residency=["eu-west"])


def _plan(
    needs: Needs, *, local: LocalState | None = LOCAL, residency: Residency = EU, **external: ExternalState
):
    states = {name: external.get(name, ExternalState()) for name in PROVIDERS}
    return plan_with_fallbacks(
        ROUTE, residency, TENANT, local, PROVIDERS, states, spend_left=None, needs=needs
    )


def test_an_absent_field_is_never_unsupported() -> None:
    plan = _plan(Needs())
    assert [c.route for c in plan.candidates] == ["local", "external:oai", "external:claude"]
    assert plan.skipped == (("us", "residency"),)


def test_a_candidate_lacking_a_set_field_is_skipped_with_the_field() -> None:
    plan = _plan(Needs(fields=frozenset({"tools", "seed"})))
    assert [c.route for c in plan.candidates] == ["external:oai"]
    assert plan.reason == "unsupported:tools"
    assert plan.skipped == (
        ("local", "unsupported:tools"),
        ("claude", "unsupported:seed"),
        ("us", "residency"),
    )
    assert plan.unsupported is None


def test_a_local_model_with_a_tool_parser_takes_tools_first() -> None:
    parsed = msgspec.structs.replace(LOCAL, unsupported=frozenset())
    plan = _plan(Needs(fields=TOOL_FIELDS), local=parsed)
    assert [c.route for c in plan.candidates] == ["local", "external:oai", "external:claude"]
    assert plan.reason == "ok"
    assert lacking("local", Needs(fields=TOOL_FIELDS)) is None
    assert lacking("local", Needs(fields=TOOL_FIELDS), TOOL_FIELDS) == "tools"


def test_a_value_past_a_routes_limit_is_unsupported_there() -> None:
    hot = Needs(fields=frozenset({"temperature"}), values={"temperature": 1.5})
    assert lacking("anthropic", hot) == "temperature"
    assert lacking("openai", hot) is None
    assert lacking("anthropic", Needs(fields=frozenset({"temperature"}), values={"temperature": 1.0})) is None


def test_when_every_allowed_candidate_lacks_a_field_the_plan_names_it() -> None:
    plan = _plan(Needs(fields=frozenset({"min_tokens"})), local=None)
    assert plan.candidates == ()
    assert plan.unsupported == "min_tokens"


def test_a_field_outranks_passing_state_but_passing_state_is_not_a_field_refusal() -> None:
    needs = Needs(fields=frozenset({"tools"}))
    # the local engine is down too: the field is what rules it out, for good
    down = LocalState(
        model="tiny", healthy=False, breaker_open=False, overloaded=False, unsupported=TOOL_FIELDS
    )
    assert plan_local_only(down, needs).skipped == (("local", "unsupported:tools"),)
    # an external route that could honour it is only briefly unavailable: not a 400, a retry later
    plan = _plan(needs, oai=ExternalState(breaker_open=True, breaker_retry_after_s=3.0))
    assert plan.candidates and plan.candidates[0].route == "external:claude"
    plan = _plan(
        needs,
        oai=ExternalState(breaker_open=True, breaker_retry_after_s=3.0),
        claude=ExternalState(cooldown_s=2.0),
    )
    assert plan.candidates == () and plan.unsupported is None


@pytest.mark.parametrize("residency", [Residency(local_only=True), Residency(local_only=False, regions=None)])
def test_residency_comes_first_a_local_only_request_never_sees_a_route_that_could(
    residency: Residency,
) -> None:
    plan = _plan(Needs(fields=frozenset({"tools"})), residency=residency)
    assert plan.candidates == ()
    assert plan.skipped == (("local", "unsupported:tools"),)
    assert plan.unsupported == "tools"


def test_an_overloaded_local_engine_that_lacks_a_field_is_not_kept_as_a_last_resort() -> None:
    busy = LocalState(
        model="tiny", healthy=True, breaker_open=False, overloaded=True, unsupported=TOOL_FIELDS
    )
    plan = _plan(Needs(fields=frozenset({"parallel_tool_calls"})), local=busy)
    assert [c.route for c in plan.candidates] == ["external:oai", "external:claude"]
