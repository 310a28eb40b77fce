"""The request-field contract walked end to end: nothing a client sets is silently dropped.

For every route kind and every field of ``serving.contract.CONTRACT``, a request
that sets the field, over real HTTP, either shows its effect where the route
takes it (the vLLM ``SamplingParams`` the real engine built, or the body the
fake upstream received, verbatim or translated) or is a 400 naming the field
and the route that lacks it, with nothing forwarded.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import pytest_asyncio

from serving.contract import CONTRACT, FIELDS, TOOL_FIELDS, RouteKind, Support
from serving.engine import LocalEngine
from serving.protocol import Delta, GenerationRequest, Health, ProviderInfo
from tests.fakes.upstream import FakeUpstream
from tests.harness import (
    TINY,
    NodeSetup,
    RunningNode,
    audit_records_by_request,
    bearer,
    node_setup,
    running_node,
)

pytestmark = pytest.mark.engine

MODEL = "fake-model-2024-08-06"
#: route kind -> the alias served by a route of that kind only
ALIAS: dict[RouteKind, str] = {"local": "via-local", "openai": "via-openai", "anthropic": "via-anthropic"}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
#: the value each case sets
VALUES: dict[str, object] = {
    "max_tokens": 5,
    "max_completion_tokens": 6,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": ["zz"],
    "seed": 7,
    "tools": [TOOL],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "ignore_eos": True,
    "min_tokens": 2,
    "n": 2,
    "top_logprobs": 2,
    "logprobs": True,
    "logit_bias": {"5": 10},
    "frequency_penalty": 0.5,
    "presence_penalty": -0.5,
    "response_format": {"type": "json_object"},
    "prompt": ["one", "two"],
}
#: what a case sets besides its field (a tool choice needs tools; parallel calls are asked to be
#: required, where the local engine's schema shows the single call)
WITH: dict[str, dict[str, object]] = {
    "tool_choice": {"tools": [TOOL]},
    "parallel_tool_calls": {"tools": [TOOL], "tool_choice": "required"},
    "top_logprobs": {"logprobs": True},
}
#: (kind, field) -> (where it shows: a SamplingParams attribute (dotted path; ``request.`` a
#: GenerationRequest attribute) or a key of the upstream body, the value)
EFFECTS: dict[tuple[RouteKind, str], tuple[str, object]] = {
    ("local", "n"): ("n", 2),
    ("local", "top_logprobs"): ("logprobs", 2),
    ("local", "logprobs"): ("logprobs", 0),
    ("local", "logit_bias"): ("logit_bias", {5: 10.0}),
    ("local", "frequency_penalty"): ("frequency_penalty", 0.5),
    ("local", "presence_penalty"): ("presence_penalty", -0.5),
    ("local", "response_format"): ("structured_outputs.json", '{"type":"object"}'),
    ("local", "prompt"): ("request.prompt", ("one", "two")),
    ("openai", "n"): ("n", 2),
    ("openai", "top_logprobs"): ("top_logprobs", 2),
    ("openai", "logprobs"): ("logprobs", True),
    ("openai", "logit_bias"): ("logit_bias", {"5": 10}),
    ("openai", "frequency_penalty"): ("frequency_penalty", 0.5),
    ("openai", "presence_penalty"): ("presence_penalty", -0.5),
    ("openai", "response_format"): ("response_format", {"type": "json_object"}),
    ("anthropic", "response_format"): ("tool_choice", {"type": "tool", "name": "json_response"}),
    ("openai", "prompt"): ("prompt", ["one", "two"]),
    ("local", "max_tokens"): ("max_tokens", 5),
    ("local", "max_completion_tokens"): ("max_tokens", 6),
    ("local", "temperature"): ("temperature", 0.5),
    ("local", "top_p"): ("top_p", 0.9),
    ("local", "stop"): ("stop", ["zz"]),
    ("local", "seed"): ("seed", 7),
    ("local", "ignore_eos"): ("ignore_eos", True),
    ("local", "min_tokens"): ("min_tokens", 2),
    # the tools in the rendered prompt; the calls schema: an array of calls, or one call
    ("local", "tools"): ("prompt", "get_weather"),
    ("local", "tool_choice"): ("structured_outputs", "array"),
    ("local", "parallel_tool_calls"): ("structured_outputs", "object"),
    ("openai", "max_tokens"): ("max_tokens", 5),
    ("openai", "max_completion_tokens"): ("max_tokens", 6),
    ("openai", "temperature"): ("temperature", 0.5),
    ("openai", "top_p"): ("top_p", 0.9),
    ("openai", "stop"): ("stop", ["zz"]),
    ("openai", "seed"): ("seed", 7),
    ("openai", "tools"): ("tools", [TOOL]),
    ("openai", "tool_choice"): ("tool_choice", "required"),
    ("openai", "parallel_tool_calls"): ("parallel_tool_calls", False),
    ("anthropic", "max_tokens"): ("max_tokens", 5),
    ("anthropic", "max_completion_tokens"): ("max_tokens", 6),
    ("anthropic", "temperature"): ("temperature", 0.5),
    ("anthropic", "top_p"): ("top_p", 0.9),
    ("anthropic", "stop"): ("stop_sequences", ["zz"]),
    ("anthropic", "tools"): (
        "tools",
        [
            {
                "name": "get_weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                "description": "The weather in a city.",
            }
        ],
    ),
    ("anthropic", "tool_choice"): ("tool_choice", {"type": "any"}),
    ("anthropic", "parallel_tool_calls"): (
        "tool_choice",
        {"type": "any", "disable_parallel_tool_use": True},
    ),
}
CASES = [(kind, name) for kind in CONTRACT for name in FIELDS]


def test_the_table_covers_every_field_and_every_honoured_one_has_a_check() -> None:
    for kind, table in CONTRACT.items():
        assert tuple(table) == FIELDS, kind
    supported = {(k, f) for k, f in CASES if CONTRACT[k][f].support is not Support.UNSUPPORTED}
    assert supported == set(EFFECTS)
    assert set(VALUES) == set(FIELDS)


class Observed:
    """The session's real engine, keeping the vLLM ``SamplingParams`` it built for each request and
    the prompt it rendered. ``unsupported``: fields to say it lacks (a model without a tool parser)."""

    def __init__(self, engine: LocalEngine, unsupported: frozenset[str] = frozenset()) -> None:
        self.engine = engine
        self.params: list[Any] = []
        self.prompts: list[str] = []
        self.unsupported = unsupported
        self.requests: list[GenerationRequest] = []

    def describe(self) -> ProviderInfo:
        return msgspec.structs.replace(self.engine.describe(), unsupported=self.unsupported)

    async def health(self) -> Health:
        return await self.engine.health()

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        first = request.prompt[0] if isinstance(request.prompt, tuple) else request.prompt
        ids, params, _ = self.engine._prepare(msgspec.structs.replace(request, prompt=first))
        self.params.append(params)
        self.prompts.append(self.engine._tokenizer.decode(ids))
        self.requests.append(request)
        return self.engine.stream(request)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAKE_UPSTREAM_KEY", "sk-fake-secret-123")
        with FakeUpstream() as upstream:
            yield upstream


def _setup(tmp_path: Path, fake: FakeUpstream, *, audit: bool) -> NodeSetup:
    aliases = json.dumps([*ALIAS.values(), "fallback"])
    return node_setup(
        tmp_path,
        audit=audit,
        tenants={"acme": f'models = {aliases}\nresidency = ["eu-west"]'},
        extra=f"""
[[providers]]
name = "fake-openai"
kind = "openai"
base_url = "{fake.openai_base}"
region = "eu-west"
api_key_env = "FAKE_UPSTREAM_KEY"
[providers.models."{MODEL}"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[[providers]]
name = "fake-anthropic"
kind = "anthropic"
base_url = "{fake.anthropic_base}"
region = "eu-west"
api_key_env = "FAKE_UPSTREAM_KEY"
[providers.models."{MODEL}"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[[routes]]
alias = "via-local"
local = "{TINY}"
fallbacks = []

[[routes]]
alias = "via-openai"
fallbacks = [{{ provider = "fake-openai", model = "{MODEL}" }}]

[[routes]]
alias = "via-anthropic"
fallbacks = [{{ provider = "fake-anthropic", model = "{MODEL}" }}]

[[routes]]
alias = "fallback"
local = "{TINY}"
fallbacks = [{{ provider = "fake-openai", model = "{MODEL}" }}]
ttft_budget_ms = 60000
""",
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def node(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream, local_engine: LocalEngine
) -> AsyncIterator[tuple[RunningNode, Observed, str]]:
    setup = _setup(tmp_path_factory.mktemp("contract"), fake, audit=False)
    engine = Observed(local_engine)
    async with running_node(setup, {TINY: engine}) as running:
        yield running, engine, setup.keys["acme"]


def _body(alias: str, **fields: object) -> dict[str, object]:
    body: dict[str, object] = {"model": alias}
    if "prompt" not in fields:
        body["messages"] = [{"role": "user", "content": "hi"}]
    if not {"max_tokens", "max_completion_tokens"} & set(fields):
        body["max_tokens"] = 4
    return body | fields


def _effect(seen: tuple[GenerationRequest, Any], where: str) -> object:
    request, params = seen
    value: Any = request if where.startswith("request.") else params
    for attribute in where.removeprefix("request.").split("."):
        value = getattr(value, attribute)
    return value


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}-{f}" for k, f in CASES])
async def test_every_field_on_every_route_shows_its_effect_or_is_refused(
    node: tuple[RunningNode, Observed, str], fake: FakeUpstream, kind: RouteKind, name: str
) -> None:
    running, engine, key = node
    seen_upstream, seen_engine = len(fake.requests), len(engine.params)
    fields = {name: VALUES[name]} | WITH.get(name, {})
    path = "/v1/completions" if name == "prompt" else "/v1/chat/completions"
    async with httpx.AsyncClient(base_url=running.url, timeout=60) as http:
        r = await http.post(path, headers=bearer(key), json=_body(ALIAS[kind], **fields))
    if CONTRACT[kind][name].support is Support.UNSUPPORTED:
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["code"], error["param"]) == ("unsupported_field", name)
        route = "local" if kind == "local" else f"external:fake-{kind}"
        assert f"{route} cannot honour `{name}`" in error["message"]
        assert r.headers["x-bastion-route-reason"] == f"unsupported:{name}"
        assert (len(fake.requests), len(engine.params)) == (seen_upstream, seen_engine)  # nothing forwarded
        return
    assert r.status_code == 200, r.text
    where, value = EFFECTS[(kind, name)]
    if kind == "local":
        assert len(engine.params) == seen_engine + 1
        if where == "prompt":
            assert value in engine.prompts[-1]
        elif where == "structured_outputs":
            assert json.loads(engine.params[-1].structured_outputs.json)["type"] == value
        else:
            assert _effect((engine.requests[-1], engine.params[-1]), where) == value
    else:
        received = fake.requests[seen_upstream:]
        assert len(received) == 1
        assert received[0].json()[where] == value


async def test_temperature_above_one_is_refused_by_anthropic_and_sent_to_openai(
    node: tuple[RunningNode, Observed, str], fake: FakeUpstream
) -> None:
    running, _, key = node
    seen = len(fake.requests)
    async with httpx.AsyncClient(base_url=running.url, timeout=60) as http:
        refused = await http.post(
            "/v1/chat/completions", headers=bearer(key), json=_body("via-anthropic", temperature=1.5)
        )
        sent = await http.post(
            "/v1/chat/completions", headers=bearer(key), json=_body("via-openai", temperature=1.5)
        )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "temperature"
    assert sent.status_code == 200, sent.text
    received = fake.requests[seen:]
    assert [r.json()["temperature"] for r in received] == [1.5]


async def test_a_field_the_local_model_lacks_skips_local_and_local_only_is_refused(
    tmp_path: Path, fake: FakeUpstream, local_engine: LocalEngine
) -> None:
    """A local model without a tool parser (``ProviderInfo.unsupported``) is skipped for tools."""
    setup = _setup(tmp_path, fake, audit=True)
    key = setup.keys["acme"]
    seen = len(fake.requests)
    no_parser = Observed(local_engine, unsupported=TOOL_FIELDS)
    async with (
        running_node(setup, {TINY: no_parser}) as running,
        httpx.AsyncClient(base_url=running.url, timeout=60) as http,
    ):
        served = await http.post(
            "/v1/chat/completions", headers=bearer(key), json=_body("fallback", tools=[TOOL])
        )
        kept = await http.post(
            "/v1/chat/completions",
            headers=bearer(key) | {"x-bastion-residency": "local-only"},
            json=_body("fallback", tools=[TOOL]),
        )
        metrics = (await http.get("/metrics")).text
    assert served.status_code == 200, served.text
    assert served.headers["x-bastion-route"] == "external:fake-openai"
    assert served.headers["x-bastion-route-reason"] == "unsupported:tools"
    assert kept.status_code == 400, kept.text
    error = kept.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_field", "tools")
    assert "local-only" in error["message"] and "local cannot honour `tools`" in error["message"]
    received = fake.requests[seen:]
    assert [r.json()["tools"] for r in received] == [[TOOL]]  # the local-only one never left
    records = await audit_records_by_request(setup)
    start, end = records[served.json()["id"]]
    assert (start["type"], start["meta"]["route"], start["meta"]["reason"]) == (
        "request.start",
        "external:fake-openai",
        "unsupported:tools",
    )
    assert start["meta"]["skipped"] == [["local", "unsupported:tools"]]
    assert end["type"] == "request.end"
    [rejected] = records[kept.headers["x-request-id"]]
    assert rejected["type"] == "request.rejected"
    meta = rejected["meta"]
    assert (meta["http_status"], meta["error_code"], meta["param"], meta["reason"]) == (
        400,
        "unsupported_field",
        "tools",
        "unsupported:tools",
    )
    assert meta["skipped"] == [["local", "unsupported:tools"]]
    skips = 'bastion_route_skips_total{reason="unsupported:tools",route="local"} 2.0'
    assert skips in metrics, metrics
