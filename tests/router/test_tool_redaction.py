"""No personal data in a request with tools reaches either kind of external provider (the fake
upstreams record the bodies they received over real HTTP), and tool calls come back restored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.config import TenantPolicy
from router.router import Router, RouteRequest
from serving.protocol import ChatMessage, Delta, FunctionCall, GenerationRequest, ToolCall
from tests.fakes import FakeUpstream, Reply
from tests.router.conftest import FakeClock, LocalEngine, collect, policy, standard_config

EMAIL = "jane.roe@example.org"
IBAN = "GB82WEST12345698765432"
PHONE = "+1 415 555 2671"
VALUES = (EMAIL, IBAN, PHONE, "4111 1111 1111 1111", "10.20.30.40")
#: residency that picks each provider kind in ``standard_config``
KINDS = {"openai": "eu-west", "anthropic": "eu-central"}


def _policy(kind: str, *, restore: bool = True) -> TenantPolicy:
    return policy(residency=[KINDS[kind]], redact=True, restore_pii=restore)


def _tool(name: str, description: str, schema: dict[str, Any]) -> dict[str, object]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


def _request(tenant_policy: TenantPolicy, generation: GenerationRequest) -> RouteRequest:
    return RouteRequest(tenant="t", policy=tenant_policy, alias="chat", generation=generation)


def _generation(
    messages: tuple[ChatMessage, ...], tools: tuple[dict[str, object], ...], **fields: Any
) -> GenerationRequest:
    return GenerationRequest(
        request_id="req-tools",
        model="chat",
        messages=messages,
        tools=tools,
        fields=frozenset({"tools", *fields}),
        **fields,
    )


@pytest.fixture
async def router(upstream_a: FakeUpstream, upstream_b: FakeUpstream, key_file: Path) -> AsyncIterator[Router]:
    engine = LocalEngine()
    engine.healthy = False  # every request goes out
    r = Router(standard_config(upstream_a, upstream_b, key_file), local={"tiny": engine}, clock=FakeClock())
    yield r
    await r.aclose()


def _upstream(kind: str, a: FakeUpstream, b: FakeUpstream) -> FakeUpstream:
    return a if kind == "openai" else b


def _everywhere() -> GenerationRequest:
    schema = {
        "type": "object",
        "properties": {
            "account": {"type": "string", "description": f"the payer's IBAN, e.g. {IBAN}"},
            "notify": {"type": "string", "enum": [EMAIL, "nobody"]},
        },
    }
    messages = (
        ChatMessage(role="system", content=f"Escalate to {PHONE}."),
        ChatMessage(role="user", content="Pay the invoice", name=f"clerk-{IBAN}"),
        ChatMessage(
            role="assistant",
            tool_calls=(
                ToolCall(id="c1", function=FunctionCall(name="pay", arguments=json.dumps({"notify": EMAIL}))),
                ToolCall(id="c2", function=FunctionCall(name="pay", arguments='{"card": 4111111111111111}')),
            ),
        ),
        ChatMessage(role="tool", tool_call_id="c1", content=f"sent to {EMAIL}"),
        ChatMessage(role="tool", tool_call_id="c2", content="declined: card 4111 1111 1111 1111"),
    )
    return _generation(
        messages,
        (_tool("pay", f"Pays; questions to {EMAIL}", schema), _tool(f"refund-{IBAN}", "Refunds", schema)),
        tool_choice={"type": "function", "function": {"name": f"refund-{IBAN}"}},
    )


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_no_personal_data_in_any_part_of_the_body_either_provider_received(
    kind: str, router: Router, upstream_a: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    fake = _upstream(kind, upstream_a, upstream_b)
    stream = await router.open(_request(_policy(kind), _everywhere()))
    await collect(stream)
    body = fake.requests[0].body.decode()
    for value in (*VALUES, "4111111111111111", "GB82"):
        assert value not in body, value
    sent = json.loads(body)
    names = [t.get("name") or t["function"]["name"] for t in sent["tools"]]
    assert names == ["pay", "refund-IBAN_1"]  # a name keeps the characters names allow
    choice = sent["tool_choice"]
    assert choice.get("name", (choice.get("function") or {}).get("name")) == "refund-IBAN_1"
    assert stream.decision.redactions["EMAIL"] == 5 and stream.decision.redactions["CARD"] == 2


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_tool_calls_come_back_with_the_values_restored(
    kind: str, router: Router, upstream_a: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    fake = _upstream(kind, upstream_a, upstream_b)
    fake.script(Reply(text="", tool_call=("call_9", "refund-IBAN_1", '{"notify": "[EMAIL_1]", "n": 2}')))
    stream = await router.open(_request(_policy(kind), _everywhere()))
    streamed: dict[int, list[str]] = {}
    last = Delta()
    async for delta in stream:
        for piece in delta.tool_call_deltas or ():
            streamed.setdefault(piece.index, []).append(piece.name or "")
            streamed[piece.index].append(piece.arguments)
        last = delta
    assert last.finish_reason == "tool_calls" and last.tool_calls is not None
    call = last.tool_calls[0]
    assert call.function.name == f"refund-{IBAN}"
    assert json.loads(call.function.arguments) == {"notify": EMAIL, "n": 2}
    assert "".join(streamed[0]) == f"refund-{IBAN}" + call.function.arguments


_PLACES = st.sampled_from(
    ["user", "tool_result", "arguments", "description", "parameter", "enum", "property", "message_name"]
)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.sampled_from(VALUES), place=_PLACES, words=st.text(alphabet="xyz ", max_size=10))
async def test_a_value_placed_anywhere_never_reaches_the_provider(
    kind: str,
    router: Router,
    upstream_a: FakeUpstream,
    upstream_b: FakeUpstream,
    value: str,
    place: str,
    words: str,
) -> None:
    fake = _upstream(kind, upstream_a, upstream_b)
    fake.reset()
    here = f"{words} {value}"

    def at(name: str) -> str:
        return here if place == name else words

    prop = {"type": "string", "description": at("parameter")}
    if place == "enum":
        prop["enum"] = ["a", value]
    schema = {"type": "object", "properties": {value if place == "property" else "p": prop}}
    messages = (
        # a name takes no spaces: the identifier alone, dashed
        ChatMessage(
            role="user", content=at("user"), name=value.replace(" ", "-") if place == "message_name" else None
        ),
        ChatMessage(
            role="assistant",
            tool_calls=(
                ToolCall(
                    id="c", function=FunctionCall(name="f", arguments=json.dumps({"q": at("arguments")}))
                ),
            ),
        ),
        ChatMessage(role="tool", tool_call_id="c", content=at("tool_result")),
    )
    stream = await router.open(
        _request(_policy(kind), _generation(messages, (_tool("f", at("description"), schema),)))
    )
    await collect(stream)
    body = fake.requests[0].body.decode()
    assert value not in body and value.replace(" ", "-") not in body
