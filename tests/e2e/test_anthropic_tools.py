"""Tools through the Anthropic route with the official ``openai`` client, over real HTTP: the
Messages body the fake Anthropic upstream received, and tool calls back as OpenAI's, streamed
as tool-call deltas (index, id and name first, then argument fragments), with redacted values
restored in the calls."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
import pytest_asyncio

from tests.fakes.upstream import FakeUpstream, Reply
from tests.harness import RunningNode, node_setup, running_node

MODEL = "claude-fake-2024-10-22"
EMAIL = "jane.roe@example.org"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}
NOTIFY = {
    "type": "function",
    "function": {
        "name": "notify",
        "description": f"Mails the result; the default recipient is {EMAIL}.",
        "parameters": {"type": "object", "properties": {"to": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def node(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream
) -> AsyncIterator[tuple[RunningNode, str]]:
    tmp = tmp_path_factory.mktemp("anthropic-tools")
    key_file = tmp / "anthropic.key"
    key_file.write_text("sk-ant-fake\n")
    setup = node_setup(
        tmp,
        audit=False,
        tenants={"acme": 'models = ["claude"]\nresidency = ["eu-west"]\nrestore_pii = true'},
        extra=f"""
[[providers]]
name = "fake-anthropic"
kind = "anthropic"
base_url = "{fake.anthropic_base}"
region = "eu-west"
api_key_file = "{key_file}"
[providers.models."{MODEL}"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[[routes]]
alias = "claude"
fallbacks = [{{ provider = "fake-anthropic", model = "{MODEL}" }}]
""",
    )
    async with running_node(setup, {}) as running:
        yield running, setup.keys["acme"]


def _client(node: tuple[RunningNode, str]) -> openai.AsyncOpenAI:
    running, key = node
    return openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=key, max_retries=0)


def _received(fake: FakeUpstream, seen: int) -> dict[str, Any]:
    [request] = fake.requests[seen:]
    assert request.path.endswith("/v1/messages")
    body: dict[str, Any] = request.json()
    return body


@pytest.mark.asyncio(loop_scope="session")
async def test_tools_go_out_as_messages_tools_and_the_call_comes_back(
    node: tuple[RunningNode, str], fake: FakeUpstream
) -> None:
    seen = len(fake.requests)
    fake.script(Reply(text="", tool_call=("toolu_01", "get_weather", '{"city": "Paris", "unit": "C"}')))
    answer = await _client(node).chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        max_tokens=50,
    )
    sent = _received(fake, seen)
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
            "description": "The weather in a city.",
        }
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert (call.id, call.type, call.function.name) == ("toolu_01", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "C"}


@pytest.mark.asyncio(loop_scope="session")
async def test_tool_calls_stream_as_openai_deltas_with_values_restored(
    node: tuple[RunningNode, str], fake: FakeUpstream
) -> None:
    seen = len(fake.requests)
    # each event in its own read: each piece in its own chunk
    arguments = '{"to": "[EMAIL_1]", "body": "18 degrees"}'
    fake.script(Reply(text="", tool_call=("toolu_02", "notify", arguments), gap_s=0.15))
    stream = await _client(node).chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "Mail the weather"}],
        tools=[WEATHER, NOTIFY],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=50,
        stream=True,
    )
    pieces: list[Any] = []
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            pieces.extend(choice.delta.tool_calls or [])
            finish = choice.finish_reason or finish
    sent = _received(fake, seen)
    assert EMAIL not in json.dumps(sent)
    assert sent["tools"][1]["description"] == "Mails the result; the default recipient is [EMAIL_1]."
    assert sent["tool_choice"] == {"type": "any"}
    assert finish == "tool_calls"
    # the name first, then argument fragments (the fake sends two; a busy host may read them as one)
    assert len(pieces) in (2, 3), pieces
    first = pieces[0]
    assert (first.index, first.id, first.type, first.function.name) == (0, "toolu_02", "function", "notify")
    assert all(p.index == 0 and p.id is None and p.function.name is None for p in pieces[1:])
    arguments = "".join(p.function.arguments or "" for p in pieces)
    assert json.loads(arguments) == {"to": EMAIL, "body": "18 degrees"}


@pytest.mark.asyncio(loop_scope="session")
async def test_a_tool_round_trip_becomes_tool_use_and_one_turn_of_tool_results(
    node: tuple[RunningNode, str], fake: FakeUpstream
) -> None:
    seen = len(fake.requests)
    calls = [
        {
            "id": "toolu_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        },
        {
            "id": "toolu_b",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
        },
    ]
    answer = await _client(node).chat.completions.create(
        model="claude",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Oslo or Rome?"},
            {"role": "assistant", "content": None, "tool_calls": calls},  # type: ignore[typeddict-item]
            {"role": "tool", "tool_call_id": "toolu_a", "content": "2 degrees"},
            {"role": "tool", "tool_call_id": "toolu_b", "content": "19 degrees"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        max_tokens=50,
    )
    assert answer.choices[0].finish_reason == "stop"
    sent = _received(fake, seen)
    assert sent["system"] == "Be brief."
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Oslo or Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "2 degrees"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "19 degrees"},
            ],
        },
    ]
    assert "tool_choice" not in sent  # nothing asked beyond the API's default


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("stream", [False, True])
async def test_a_json_schema_answer_comes_back_as_json_text_restored(
    node: tuple[RunningNode, str], fake: FakeUpstream, stream: bool
) -> None:
    seen = len(fake.requests)
    answer = '{"owner": "[EMAIL_1]", "ok": true}'
    fake.script(Reply(text="", tool_call=("toolu_03", "json_response", answer), gap_s=0.01))
    schema = {
        "type": "object",
        "properties": {
            "owner": {"type": "string", "description": f"like {EMAIL}"},
            "ok": {"type": "boolean"},
        },
        "required": ["owner", "ok"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "owner", "schema": schema, "strict": True}}
    client = _client(node)
    messages = [{"role": "user", "content": f"Who owns {EMAIL}?"}]
    if stream:
        text, finish = "", None
        async for chunk in await client.chat.completions.create(
            model="claude",
            messages=messages,
            response_format=fmt,
            max_tokens=50,
            stream=True,  # type: ignore[arg-type]
        ):
            for choice in chunk.choices:
                assert not choice.delta.tool_calls
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
    else:
        done = await client.chat.completions.create(
            model="claude",
            messages=messages,
            response_format=fmt,
            max_tokens=50,  # type: ignore[arg-type]
        )
        text, finish = done.choices[0].message.content or "", done.choices[0].finish_reason
        assert not done.choices[0].message.tool_calls
    sent = _received(fake, seen)
    assert EMAIL not in json.dumps(sent)
    assert [t["name"] for t in sent["tools"]] == ["json_response"]
    assert sent["tools"][0]["input_schema"]["properties"]["owner"]["description"] == "like [EMAIL_1]"
    assert sent["tool_choice"] == {"type": "tool", "name": "json_response"}
    assert finish == "stop"
    assert json.loads(text) == {"owner": EMAIL, "ok": True}
