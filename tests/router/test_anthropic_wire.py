"""The Messages request built for OpenAI-style requests: response_format as a forced tool, and the
tool translations' refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from router.anthropic_provider import AnthropicProvider
from router.anthropic_wire import build_messages_body
from serving.errors import BastionError
from serving.protocol import ChatMessage, FunctionCall, GenerationRequest, ToolCall
from tests.fakes import FakeUpstream, Reply
from tests.router.conftest import CLAUDE, decode_config, provider_toml

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "ok": {"type": "boolean"}},
    "required": ["city", "ok"],
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def _build(
    response_format: dict[str, object] | None = None, **fields: Any
) -> tuple[dict[str, Any], str | None]:
    request = GenerationRequest(
        request_id="r",
        model="claude",
        messages=(ChatMessage(role="user", content="hi"),),
        response_format=response_format,
        **fields,
    )
    body, tool = build_messages_body(request, default_max_tokens=16)
    return json.loads(body), tool


def test_a_json_schema_becomes_a_forced_tool_whose_input_is_the_answer() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "description": "A city.", "schema": SCHEMA}}
    body, tool = _build(fmt)
    assert tool == "json_response"
    [forced] = body["tools"]
    assert forced["name"] == "json_response" and forced["input_schema"] == SCHEMA
    assert forced["description"].endswith("A city.")
    assert body["tool_choice"] == {"type": "tool", "name": "json_response"}


def test_json_object_is_any_object() -> None:
    body, tool = _build({"type": "json_object"})
    assert body["tools"][0]["input_schema"] == {"type": "object"}
    assert body["tool_choice"] == {"type": "tool", "name": tool}


def test_text_is_no_tool() -> None:
    body, tool = _build({"type": "text"})
    assert tool is None and "tools" not in body and "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "parallel", "sent"),
    [
        (None, None, {"type": "any"}),
        ("auto", None, {"type": "any"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", None, {"type": "tool", "name": "json_response_1"}),
        (
            {"type": "function", "function": {"name": "json_response"}},
            None,
            {"type": "tool", "name": "json_response"},
        ),
    ],
)
def test_with_client_tools_the_model_must_call_one_tool_or_the_other(
    choice: object, parallel: bool | None, sent: dict[str, object]
) -> None:
    mine = {"type": "function", "function": {"name": "json_response", "parameters": {"type": "object"}}}
    body, tool = _build(
        {"type": "json_object"}, tools=(WEATHER, mine), tool_choice=choice, parallel_tool_calls=parallel
    )
    assert tool == "json_response_1"  # apart from the client's own tool of that name
    assert [t["name"] for t in body["tools"]] == ["get_weather", "json_response", "json_response_1"]
    assert body["tool_choice"] == sent


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array"}}},
        {"type": "json_schema"},
        {"type": "yaml"},
    ],
)
def test_a_format_a_tool_cannot_carry_is_a_400(fmt: dict[str, object]) -> None:
    with pytest.raises(BastionError) as raised:
        _build(fmt)
    assert (raised.value.status_code, raised.value.param) == (400, "response_format")


def test_a_named_tool_choice_outside_the_tools_is_a_400() -> None:
    with pytest.raises(BastionError) as raised:
        _build(tools=(WEATHER,), tool_choice={"type": "function", "function": {"name": "other"}})
    assert (raised.value.status_code, raised.value.param) == (400, "tool_choice")


def test_parameters_without_a_type_are_an_object_and_any_other_type_is_a_400() -> None:
    untyped = {"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": {}}}}}
    body, _ = _build(tools=(untyped,))
    assert body["tools"][0]["input_schema"] == {"type": "object", "properties": {"a": {}}}
    listed = {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
    with pytest.raises(BastionError) as raised:
        _build(tools=(listed,))
    assert (raised.value.status_code, raised.value.param) == (400, "tools")


def test_tool_call_arguments_that_are_not_an_object_are_a_400() -> None:
    call = ToolCall(id="c", function=FunctionCall(name="get_weather", arguments="[1, 2]"))
    request = GenerationRequest(
        request_id="r", model="claude", messages=(ChatMessage(role="assistant", tool_calls=(call,)),)
    )
    with pytest.raises(BastionError) as raised:
        build_messages_body(request, default_max_tokens=16)
    assert (raised.value.status_code, raised.value.param) == (400, "messages")


async def test_the_forced_tools_input_streams_as_the_answers_text(
    upstream_b: FakeUpstream, key_file: Path
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}
    upstream_b.script(Reply(text="", tool_call=("toolu_1", "json_response", '{"city": "Lyon", "ok": true}')))
    config = decode_config(provider_toml("p", "anthropic", upstream_b.anthropic_base, "eu", key_file, CLAUDE))
    provider = AnthropicProvider(config.providers[0])
    request = GenerationRequest(
        request_id="r",
        model=CLAUDE,
        messages=(ChatMessage(role="user", content="a city"),),
        response_format=fmt,
    )
    try:
        deltas = [d async for d in provider.stream(request)]
    finally:
        await provider.aclose()
    assert json.loads("".join(d.text for d in deltas)) == {"city": "Lyon", "ok": True}, deltas
    assert deltas[-1].finish_reason == "stop"  # a plain answer, not a tool call
    assert all(not d.tool_calls and not d.tool_call_deltas for d in deltas)
    assert upstream_b.requests[0].json()["tool_choice"] == {"type": "tool", "name": "json_response"}
